#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for nblab's Slurm launcher tests (and for trying
# `nblab sweep --launcher slurm` on one machine).
#
#   scripts/slurm-up.sh            install if missing, configure, start, wait for `sinfo`
#   export SLURM_CONF=/tmp/nblab-slurm/slurm.conf
#   scripts/slurm-down.sh          stop every daemon by its pid file
#
# Installs (Debian, as root): munge, slurmctld, slurmd, slurm-client, slurmdbd and
# mariadb-server. Writes everything under $NBLAB_SLURM_DIR (default /tmp/nblab-slurm):
# slurm.conf and slurmdbd.conf for THIS host (its short hostname, all its CPUs, no GPUs),
# a private MariaDB data folder, state, spool, logs and pid files. Starts munged (as the
# munge user), mariadbd, slurmdbd (so sacct, and with it submitit, sees real job
# states), slurmctld and slurmd, all on 127.0.0.1, and waits until the node is idle.
# Nothing is started through systemd or init scripts; /etc is only touched by apt
# (and /etc/munge/munge.key, created if the package left none).
# Exit codes: 0 up, 3 Slurm cannot be installed here, 1 it was installed but did not start.
set -euo pipefail

DIR=${NBLAB_SLURM_DIR:-/tmp/nblab-slurm}
DB_PORT=${NBLAB_SLURM_DB_PORT:-13306}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
START=$(date +%s)

say() { echo "[slurm-up $(($(date +%s) - START))s] $*"; }
die() { echo "[slurm-up] $2" >&2; exit "$1"; }

alive() {  # a pid file whose process runs (a zombie left by a non-reaping PID 1 does not)
    local pid
    [[ -s $1 ]] || return 1
    pid=$(cat "$1")
    [[ -d /proc/$pid ]] && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
    local limit=$1 what=$2
    shift 2
    for ((i = 0; i < limit * 5; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die 1 "$what did not come up within ${limit}s; logs in $DIR/log and $DIR/mysql-run"
}

# -- install -----------------------------------------------------------------------
missing=()
for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null || [[ -x /usr/sbin/$cmd ]] || missing+=("$cmd")
done
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die 3 "Slurm is not installed (${missing[*]} missing) and only root can install it"
    command -v apt-get >/dev/null || die 3 "Slurm is not installed (${missing[*]} missing) and there is no apt-get"
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >"/tmp/nblab-slurm-apt.log" 2>&1; then
        apt-get update -q >>"/tmp/nblab-slurm-apt.log" 2>&1 || true
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >>"/tmp/nblab-slurm-apt.log" 2>&1 ||
            die 3 "apt-get could not install ${PACKAGES[*]}: see /tmp/nblab-slurm-apt.log"
    fi
    say "installed"
fi

# -- configure ---------------------------------------------------------------------
if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/slurmdbd.pid"; then
    say "already running (SLURM_CONF=$DIR/slurm.conf)"
    exit 0
fi
"$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true
# Slurm's state (job ids) and the accounting database live and go together: job ids
# start again at 1 without the state, and sacct must not answer with an old job
[[ -d $DIR/state ]] || rm -rf "$DIR/mysql"
mkdir -p "$DIR"/{state,spool,log}

cat >"$DIR/slurm.conf" <<EOF
# One-node cluster on loopback, written by nblab scripts/slurm-up.sh for $HOST
ClusterName=nblab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# submitit ignores SIGTERM: the default 30 s would hold the CPUs after a cancel or timeout
KillWait=5
MinJobAge=300
MailProg=/bin/true
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=nblab
StorageLoc=slurm_acct_db
EOF
chmod 600 "$DIR/slurmdbd.conf"
export SLURM_CONF=$DIR/slurm.conf  # slurmdbd reads slurmdbd.conf beside it

# -- munge ---------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 755 /run/munge
if ! alive /run/munge/munged.pid; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
fi
wait_for 10 munged bash -c 'munge -n | unmunge'

# -- MariaDB for slurmdbd --------------------------------------------------------------
if [[ ! -d $DIR/mysql/mysql ]]; then
    say "initialising MariaDB in $DIR/mysql"
    mkdir -p "$DIR/mysql"
    chown mysql:mysql "$DIR/mysql"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 ||
        die 1 "mariadb-install-db failed: see $DIR/log/mariadb-install.log"
fi
if ! alive "$DIR/mysql-run/mysqld.pid"; then
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    mkdir -p "$DIR/mysql-run"
    chown mysql:mysql "$DIR/mysql-run"  # socket, pid file and log: written as mysql
    nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" \
        --socket="$DIR/mysql-run/mysqld.sock" --pid-file="$DIR/mysql-run/mysqld.pid" \
        --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/mysql-run/mariadb.log" \
        --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
fi
wait_for 60 mariadbd mariadb --no-defaults -S "$DIR/mysql-run/mysqld.sock" -u root -e 'SELECT 1'
mariadb --no-defaults -S "$DIR/mysql-run/mysqld.sock" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'nblab';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'nblab';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

# -- Slurm ---------------------------------------------------------------------------
say "starting slurmdbd"
/usr/sbin/slurmdbd
wait_for 60 slurmdbd sacctmgr -n list cluster
sacctmgr -i add cluster nblab >/dev/null 2>&1 || true
say "starting slurmctld and slurmd"
/usr/sbin/slurmctld
wait_for 30 slurmctld scontrol ping
/usr/sbin/slurmd
node_idle() { [[ $(sinfo -h -n "$HOST" -o %t) == idle ]]; }
wait_for 60 "node $HOST (idle)" node_idle
say "up: node $HOST idle, $CPUS CPUs; export SLURM_CONF=$SLURM_CONF"
