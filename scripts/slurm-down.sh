#!/usr/bin/env bash
# Stop the one-node cluster of scripts/slurm-up.sh: slurmd, slurmctld, slurmdbd, mariadbd
# and munged, each by the pid in its pid file (PID 1 here may not reap, so a stopped
# daemon can linger as a zombie: it counts as stopped). Jobs still on the cluster are
# cancelled first. Config, the database and logs stay in $NBLAB_SLURM_DIR.
set -uo pipefail

DIR=${NBLAB_SLURM_DIR:-/tmp/nblab-slurm}

running() {  # the pid runs and is no zombie
    [[ -d /proc/$1 ]] && ! grep -q '^[^)]*) Z' "/proc/$1/stat" 2>/dev/null
}

stop() {  # stop NAME PIDFILE
    local name=$1 file=$2 pid
    [[ -s $file ]] || return 0
    pid=$(cat "$file")
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 100; i++)); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            kill -KILL "$pid" 2>/dev/null
            echo "[slurm-down] $name ($pid) killed after 10 s"
        else
            echo "[slurm-down] $name ($pid) stopped"
        fi
    fi
    rm -f "$file"
}

# jobs still on the cluster: cancel them while slurmctld and slurmd can still end them
export SLURM_CONF=$DIR/slurm.conf
if [[ -s $DIR/slurmctld.pid ]] && running "$(cat "$DIR/slurmctld.pid")"; then
    scancel --full --user "$(id -un)" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        [[ -z $(squeue -h -t running,completing 2>/dev/null) ]] && break
        sleep 0.1
    done
fi
stop slurmd "$DIR/slurmd.pid"
stop slurmctld "$DIR/slurmctld.pid"
stop slurmdbd "$DIR/slurmdbd.pid"
stop mariadbd "$DIR/mysql-run/mysqld.pid"
stop munged /run/munge/munged.pid
exit 0
