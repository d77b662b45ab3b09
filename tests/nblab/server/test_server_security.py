"""Auth on every route, path escapes -> 403, bad bodies -> 400 naming the field."""

import json
import re

import pytest
import tornado.httpclient
import tornado.websocket
from tornado.routing import Router, Rule

SAMPLE = {"run_id": "20260101-000000-abcd", "sweep": "s1"}
NO_AUTH = {"Authorization": ""}


def nblab_routes(web_app):
    """(url path, handler class) of every route the web app serves under nblab/api,
    found by walking tornado's routers, so a new route cannot be left out."""
    found = []

    def walk(router):
        for rule in getattr(router, "rules", []):
            if isinstance(rule.target, Router):
                walk(rule.target)
            elif isinstance(rule, Rule) and isinstance(rule.target, type):
                pattern = getattr(rule.matcher, "regex", None)
                if pattern is not None and "/nblab/api/" in pattern.pattern:
                    found.append((pattern.pattern, rule.target))

    walk(web_app.default_router)
    return found


def sample_path(pattern: str, base_url: str) -> str:
    """The regex route with its groups filled by sample values, relative to the base URL."""
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLE[m.group(1)], pattern)
    path = path.rstrip("$").replace("\\.", ".")
    assert "(" not in path and "\\" not in path, f"unfilled route pattern {pattern}"
    return path[len(base_url) :]


def methods(handler) -> list[str]:
    from tornado.web import RequestHandler

    return [
        m
        for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if getattr(handler, m.lower()) is not getattr(RequestHandler, m.lower())
    ]


def test_the_route_walk_finds_every_route(jp_web_app, jp_base_url):
    paths = {sample_path(p, jp_base_url) for p, _ in nblab_routes(jp_web_app)}
    assert {"nblab/api/runs", "nblab/api/sweeps/s1/report", "nblab/api/events"} <= paths
    assert "nblab/api/merges" in paths
    assert len(paths) == 14


async def test_every_route_rejects_unauthenticated_requests(jp_fetch, jp_web_app, jp_base_url):
    checked = []
    for pattern, handler in nblab_routes(jp_web_app):
        path = sample_path(pattern, jp_base_url)
        for method in methods(handler):
            body = "{}" if method in ("POST", "PUT", "PATCH") else None
            response = await jp_fetch(
                path, method=method, body=body, headers=dict(NO_AUTH), raise_error=False
            )
            assert response.code == 403, f"{method} {path}: {response.code}"
            checked.append(f"{method} {path}")
    assert len(checked) == 15  # 9 GETs (events included) and 6 POSTs (merges included)


async def test_the_events_socket_rejects_unauthenticated_clients(jp_ws_fetch):
    with pytest.raises(tornado.httpclient.HTTPClientError) as err:
        await jp_ws_fetch("nblab", "api", "events", headers=dict(NO_AUTH))
    assert err.value.code == 403


async def post_sweeps(jp_fetch, body, raw=False):
    response = await jp_fetch(
        "nblab",
        "api",
        "sweeps",
        method="POST",
        body=body if raw else json.dumps(body),
        raise_error=False,
    )
    return response.code, json.loads(response.body)["message"]


@pytest.fixture
def outside_toml(tmp_path):
    path = tmp_path / "outside" / "secret.toml"
    path.parent.mkdir()
    path.write_text('name = "secret"\nbase = "gpt-tiny"\n')
    return path


@pytest.mark.parametrize(
    "make_path",
    [
        pytest.param(lambda root, outside: "../outside/secret.toml", id="dotdot"),
        pytest.param(lambda root, outside: "sub/../../outside/secret.toml", id="dotdot-inner"),
        pytest.param(lambda root, outside: str(outside), id="absolute"),
        pytest.param(lambda root, outside: "/etc/passwd", id="absolute-system"),
        pytest.param(lambda root, outside: "~/secret.toml", id="home"),
        pytest.param(lambda root, outside: "link/secret.toml", id="symlinked-dir"),
        pytest.param(lambda root, outside: "secret-link.toml", id="symlinked-file"),
    ],
)
async def test_paths_escaping_the_root_are_403(jp_fetch, jp_root_dir, outside_toml, make_path):
    (jp_root_dir / "sub").mkdir()
    (jp_root_dir / "link").symlink_to(outside_toml.parent)
    (jp_root_dir / "secret-link.toml").symlink_to(outside_toml)
    code, message = await post_sweeps(jp_fetch, {"path": make_path(jp_root_dir, outside_toml)})
    assert code == 403, message
    assert '"path"' in message


@pytest.mark.parametrize(
    ("body", "field", "raw"),
    [
        ("{not json", "not valid JSON", True),
        ('["a.toml"]', "JSON object", True),
        ({}, '"path" is required', False),
        ({"path": 3}, '"path"', False),
        ({"path": ""}, '"path"', False),
        ({"path": "a.toml", "jobs": "2"}, '"jobs"', False),
        ({"path": "a.toml", "jobs": 0}, '"jobs"', False),
        ({"path": "a.toml", "jobs": True}, '"jobs"', False),
        ({"path": "a.toml", "resume": "yes"}, '"resume"', False),
        ({"path": "a.toml", "shell": "rm -rf /"}, "'shell'", False),
        ({"path": "notes.txt"}, '"path" must name a .toml', False),
    ],
)
async def test_bad_sweep_bodies_are_400_naming_the_field(jp_fetch, jp_root_dir, body, field, raw):
    (jp_root_dir / "a.toml").write_text('name = "a"\nbase = "gpt-tiny"\n')
    (jp_root_dir / "notes.txt").write_text("hello")
    code, message = await post_sweeps(jp_fetch, body, raw=raw)
    assert code == 400, message
    assert field in message


async def test_a_missing_toml_is_404(jp_fetch):
    code, message = await post_sweeps(jp_fetch, {"path": "nowhere.toml"})
    assert code == 404 and '"path"' in message


@pytest.mark.parametrize(
    ("parts", "body", "field"),
    [
        (("runs", "x1", "cancel"), {"wait": -1}, '"wait"'),
        (("runs", "x1", "cancel"), {"wait": "soon"}, '"wait"'),
        (("runs", "x1", "cancel"), {"force": True}, "'force'"),
        (("runs", "x1", "rerun"), {"all": True}, "'all'"),
        (("sweeps", "s1", "report"), {"format": "pdf"}, "'format'"),
    ],
)
async def test_bad_action_bodies_are_400(jp_fetch, parts, body, field):
    response = await jp_fetch(
        "nblab", "api", *parts, method="POST", body=json.dumps(body), raise_error=False
    )
    assert response.code == 400
    assert field in json.loads(response.body)["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"status": "done"}, '"status"'), ({"status": "running,nope"}, '"status"')],
)
async def test_bad_query_parameters_are_400(jp_fetch, params, field):
    response = await jp_fetch("nblab", "api", "runs", params=params, raise_error=False)
    assert response.code == 400 and field in json.loads(response.body)["message"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"since_step": "-1"}, '"since_step"'), ({"max_points": "many"}, '"max_points"')],
)
async def test_bad_metric_parameters_are_400(jp_fetch, make_run, params, field):
    run_id = make_run("a", "s1")
    response = await jp_fetch(
        "nblab", "api", "runs", run_id, "metrics", params=params, raise_error=False
    )
    assert response.code == 400 and field in json.loads(response.body)["message"]


async def test_a_sweep_name_that_climbs_serves_no_file(jp_fetch, nblab_home):
    (nblab_home / "report.html").write_text("not a report")
    response = await jp_fetch("nblab", "api", "sweeps", "..", "report.html", raise_error=False)
    assert response.code in (400, 404)
    assert b"not a report" not in response.body
