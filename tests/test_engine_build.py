"""`nsbox build` and nsbox.build(): real builds with real RUN containers, compared with buildah.

Base images are the offline busybox the engine makes; buildah reads the same
image from an oci-archive written by `nsbox save`, into a vfs store in the
test's temporary directory (never the host's storage).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from test_engine_pull import (  # noqa: F401 - fixtures
    REGISTRY,
    Nsbox,
    one_line_error,
    pushed,
    registry,
)

from nsbox.engine.build.context import IgnoreRules
from nsbox.engine.build.parser import BuildSyntaxError, expand, parse
from nsbox.engine.images import ImageStore

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(os.geteuid() != 0, reason="builds mount overlays: needs root")]


@pytest.fixture
def nsbox(tmp_path: Path):
    box = Nsbox(tmp_path)
    yield box
    box.remove_containers()


MULTISTAGE = r"""# escape=\
ARG BASE=busybox
FROM $BASE AS base
ARG V=1
ENV A=b C="d e" \
    P=/opt
LABEL stage=one
RUN echo built-$V > /v.txt && mkdir -p /opt/data && \
    echo ran-run-step
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
WORKDIR $P/app
COPY a.txt sub/ ./
USER 1000:1000

FROM scratch AS final
COPY --from=base /opt/app /app
COPY --from=base /v.txt /exec.txt /
LABEL k=v other="x y"
EXPOSE 80/tcp 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD ["true"]
SHELL ["/bin/sh", "-ec"]
WORKDIR /app
USER 1000
CMD ["sh"]
ENTRYPOINT ["/bin/env"]
"""


def make_context(root: Path, containerfile: str = MULTISTAGE, name: str = "Containerfile") -> Path:
    ctx = root / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "a.txt").write_text("hello\n")
    (ctx / "sub").mkdir(exist_ok=True)
    (ctx / "sub" / "b.txt").write_text("x\n")
    (ctx / name).write_text(containerfile)
    return ctx


def section(nsbox: Nsbox, ref: str) -> dict:
    return ImageStore(nsbox.root).resolve(ref).config


def leftovers(nsbox: Nsbox) -> dict:
    """What a build may leave: containers, build rootfs dirs, staging files, mounts."""
    containers = nsbox("ps", "-a", "-q").stdout.split()
    cdir = nsbox.root / "containers"
    rootfs = sorted(os.listdir(cdir)) if cdir.exists() else []
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if str(nsbox.root) in line]
    return {"containers": containers, "rootfs": rootfs, "tmp": nsbox.tmp_left(), "mounts": mounts}


NOTHING = {"containers": [], "rootfs": [], "tmp": [], "mounts": []}


# ------------------------------------------------------------------ pure logic
def test_parser_continuations_escape_and_errors():
    text = "# escape=`\nFROM busybox\n# a comment\nRUN echo a `\n\n  # inside\n  b\nENV X=1\n"
    instructions, escape = parse(text)
    assert escape == "`"
    assert [(i.keyword, i.line) for i in instructions] == [("FROM", 2), ("RUN", 4), ("ENV", 8)]
    assert instructions[1].args == "echo a   b"
    with pytest.raises(BuildSyntaxError, match=r"^Dockerfile:3: unknown instruction: BOGUS$"):
        parse("FROM busybox\n\nBOGUS x\n", "Dockerfile")
    with pytest.raises(BuildSyntaxError, match=r"^Containerfile:2: unknown flag: --nope"):
        parse("FROM busybox\nCOPY --nope=1 a b\n")
    with pytest.raises(BuildSyntaxError, match=r"^Containerfile:1: FROM requires"):
        parse("FROM\n")


def test_variable_expansion():
    env = {"A": "1", "E": ""}
    assert expand("$A ${A} ${B:-dflt} ${A:+set} ${E:-empty} '$A' \"$A\" \\$A", env) == \
        "1 1 dflt set empty $A 1 $A"
    assert expand('a "b c" d', env, words=True) == ["a", "b c", "d"]


def test_ignore_rules():
    rules = IgnoreRules(["# comment", "*.log", "secret/", "!secret/keep", "**/tmp"])
    assert rules.excluded("x.log") and not rules.excluded("dir/x.log")
    assert rules.excluded("secret/a") and not rules.excluded("secret/keep")
    assert rules.excluded("a/b/tmp/c") and rules.excluded("tmp")
    assert not rules.excluded("a.txt")


# ------------------------------------------------------------------ builds
def test_multistage_build_every_instruction(nsbox, tmp_path):
    ctx = make_context(tmp_path, MULTISTAGE + "\nFROM base AS extra\n"
                       "COPY --chown=user:user --chmod=0640 a.txt /home/user/owned\n"
                       "ADD layer.tar.gz /unpacked/\n"
                       "COPY *.txt /globbed/\n"
                       "COPY . /all/\n")
    (ctx / "secret.log").write_text("no\n")
    (ctx / "c.txt").write_text("c\n")
    (ctx / ".containerignore").write_text("*.log\nsecret\n!secret/keep\n")
    (ctx / "secret").mkdir()
    (ctx / "secret" / "hidden").write_text("no\n")
    (ctx / "secret" / "keep").write_text("yes\n")
    with tarfile.open(ctx / "layer.tar.gz", "w:gz") as tar:
        data = b"from the tar\n"
        info = tarfile.TarInfo("inner/file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    iid = tmp_path / "iid"
    out = nsbox("build", "-t", "built:1", "-t", "built:2", "--target", "final",
                "--label", "from-cli=yes", "--iidfile", str(iid), str(ctx))
    image_id = out.stdout.strip().splitlines()[-1]
    assert iid.read_text() == "sha256:" + image_id
    assert "ran-run-step" in out.stdout  # the RUN output is shown
    doc = section(nsbox, "built:2")
    assert doc == section(nsbox, "built:1")
    config = doc["config"]
    assert config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert config["Cmd"] == ["sh"] and config["Entrypoint"] == ["/bin/env"]
    assert config["WorkingDir"] == "/app" and config["User"] == "1000"
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Labels"] == {"k": "v", "other": "x y", "from-cli": "yes"}
    assert config["Volumes"] == {"/data": {}} and config["StopSignal"] == "SIGINT"
    assert config["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000,
                                     "Timeout": 3_000_000_000, "Retries": 2}
    assert config["Shell"] == ["/bin/sh", "-ec"]
    assert len(doc["rootfs"]["diff_ids"]) == 2  # two COPY layers on scratch
    # The stage `base`, run: its files, its user, its environment.
    nsbox("build", "-q", "--target", "base", "-t", "base:1", str(ctx))
    check = nsbox("run", "--rm", "base:1", "sh", "-c",
                  "id -u; pwd; cat /v.txt /exec.txt /opt/app/a.txt /opt/app/b.txt; echo $C; "
                  "stat -c %u /opt/app/a.txt")
    assert check.stdout.split("\n") == ["1000", "/opt/app", "built-1", "exec-form", "hello", "x",
                                        "d e", "0", ""]
    # The extra stage: --chown/--chmod, ADD unpacks, globs, the ignore file.
    nsbox("build", "-q", "-t", "extra:1", str(ctx))
    check = nsbox("run", "--rm", "--user", "0", "extra:1", "sh", "-c",
                  "stat -c '%U %G %a' /home/user/owned; cat /unpacked/inner/file; "
                  "ls /globbed; ls /all/secret; ls -a /all")
    lines = check.stdout.split("\n")
    assert lines[0] == "user user 640"
    assert lines[1] == "from the tar"
    assert lines[2:4] == ["a.txt", "c.txt"]
    assert lines[4] == "keep"  # `!secret/keep` takes it back from the ignored secret/
    assert "Containerfile" in lines and "secret.log" not in lines  # .containerignore
    assert leftovers(nsbox) == NOTHING


def test_unchanged_rebuild_reuses_every_layer_and_changed_copy_rebuilds(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox\nRUN echo first-\"run\"; echo 1 > /1\n"
                       "COPY a.txt /a.txt\nRUN echo second-\"run\"; cat /a.txt > /2\nENV X=1\n")
    first = nsbox("build", "-t", "c:1", str(ctx))
    assert "first-run" in first.stdout and "second-run" in first.stdout
    again = nsbox("build", "-t", "c:1", str(ctx))
    assert again.stdout.count("Using cache") == 4
    assert "first-run" not in again.stdout and "second-run" not in again.stdout
    assert again.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]  # the same image id
    (ctx / "a.txt").write_text("changed\n")
    changed = nsbox("build", "-t", "c:2", str(ctx))
    assert "first-run" not in changed.stdout  # before the COPY: cached
    assert "second-run" in changed.stdout     # after it: run again
    assert changed.stdout.count("Using cache") == 1
    assert nsbox("run", "--rm", "c:2", "cat", "/2").stdout == "changed\n"
    assert nsbox("run", "--rm", "c:1", "cat", "/2").stdout == "hello\n"
    nocache = nsbox("build", "--no-cache", "-t", "c:3", str(ctx))
    assert "first-run" in nocache.stdout and "Using cache" not in nocache.stdout
    # The cache survives garbage collection (rmi of every build), and still works.
    nsbox("rmi", "c:1", "c:2", "c:3")
    after = nsbox("build", "-t", "c:4", str(ctx))
    assert after.stdout.count("Using cache") == 4
    assert nsbox("run", "--rm", "c:4", "cat", "/2").stdout == "changed\n"
    assert leftovers(nsbox) == NOTHING


def test_build_args_default_file_and_stdin_context(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox\nARG WHO=nobody\nRUN echo hi-$WHO > /who\n"
                       "RUN echo proxy=$HTTP_PROXY > /proxy\n", name="Dockerfile")
    nsbox("build", "-q", "-t", "a:1", "--build-arg", "WHO=you", "--build-arg",
          "HTTP_PROXY=http://127.0.0.1:9", str(ctx))
    assert nsbox("run", "--rm", "a:1", "cat", "/who", "/proxy").stdout == \
        "hi-you\nproxy=http://127.0.0.1:9\n"
    history = section(nsbox, "a:1")["history"]
    assert history[-2]["created_by"] == "|1 WHO=you /bin/sh -c echo hi-$WHO > /who"
    assert "127.0.0.1:9" not in json.dumps(section(nsbox, "a:1"))  # proxies stay out of the image
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(ctx, arcname=".")
    proc = subprocess.run([*nsbox.prefix, "build", "-q", "-t", "a:2", "-"], input=buf.getvalue(),
                          capture_output=True, timeout=120, env=nsbox.env)
    assert proc.returncode == 0, proc.stderr
    assert nsbox("run", "--rm", "a:2", "cat", "/who").stdout == "hi-nobody\n"
    assert nsbox.tmp_left() == []


def test_platform_args(nsbox, tmp_path):
    from nsbox.engine.images.layout import oci_architecture
    ctx = make_context(tmp_path, "FROM --platform=$BUILDPLATFORM busybox\nARG TARGETARCH\n"
                       "RUN echo $TARGETARCH > /arch\n")
    nsbox("build", "-q", "-t", "pl:1", str(ctx))
    assert nsbox("run", "--rm", "pl:1", "cat", "/arch").stdout == oci_architecture() + "\n"
    (ctx / "Containerfile").write_text("FROM --platform=linux/s390x busybox\n")
    assert "only this host's platform" in one_line_error(nsbox("build", str(ctx), check=False))


def test_syntax_error_and_failing_run_leave_nothing(nsbox, tmp_path):
    nsbox("run", "--rm", "busybox", "true")
    images_before = nsbox("images", "-q", "-a").stdout
    cache = nsbox.root / "build-cache"
    ctx = make_context(tmp_path, "FROM busybox\nRUN echo one\n\nFROOM x\n")
    proc = nsbox("build", "-t", "bad:1", str(ctx), check=False)
    assert one_line_error(proc) == "Error: Containerfile:4: unknown instruction: FROOM"
    (ctx / "Containerfile").write_text("FROM busybox\n\nHEALTHCHECK --interval=5x CMD true\n")
    assert one_line_error(nsbox("build", str(ctx), check=False)) == \
        "Error: Containerfile:3: invalid duration '5x' (want e.g. 30s, 1m30s)"
    (ctx / "Containerfile").write_text("FROM busybox\nCOPY --chown=nosuchuser a.txt /x\n")
    assert "no user 'nosuchuser'" in one_line_error(nsbox("build", str(ctx), check=False))
    (ctx / "Containerfile").write_text("FROM busybox\nCOPY missing.txt /x\n")
    assert "missing.txt" in one_line_error(nsbox("build", str(ctx), check=False))
    (ctx / "Containerfile").write_text("FROM busybox\nRUN echo made > /f; exit 3\n")
    proc = nsbox("build", "-t", "bad:1", str(ctx), check=False)
    assert one_line_error(proc) == ("Error: Containerfile:2: RUN echo made > /f; exit 3: "
                                    "the command exited with status 3")
    (ctx / "Containerfile").write_text("FROM no-such-image-here:1\n")
    assert "no-such-image-here" in one_line_error(nsbox("build", str(ctx), check=False))
    assert nsbox("images", "-q", "-a").stdout == images_before
    assert not cache.exists() or os.listdir(cache) == []
    assert leftovers(nsbox) == NOTHING


def test_only_the_stages_the_target_needs_run(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox AS unused\nRUN exit 1\n"
                       "FROM busybox AS a\nRUN echo a > /a\n"
                       "FROM scratch\nCOPY --from=a /a /a\n")
    out = nsbox("build", "-t", "s:1", str(ctx))
    assert "exit 1" not in out.stdout and "[2/2] STEP 2/2: COPY --from=a /a /a" in out.stdout
    proc = nsbox("build", "--target", "unused", str(ctx), check=False)
    assert "RUN exit 1: the command exited with status 1" in one_line_error(proc)


def test_onbuild_triggers_run_in_the_child(nsbox, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "c").mkdir()
    parent = make_context(tmp_path / "p", "FROM busybox\nONBUILD RUN echo trig > /trig\n"
                          "ONBUILD COPY a.txt /from-child.txt\n")
    nsbox("build", "-q", "-t", "parent:1", str(parent))
    assert section(nsbox, "parent:1")["config"]["OnBuild"] == ["RUN echo trig > /trig",
                                                               "COPY a.txt /from-child.txt"]
    child = make_context(tmp_path / "c", "FROM parent:1\n")
    (child / "a.txt").write_text("child's\n")
    nsbox("build", "-q", "-t", "child:1", str(child))
    out = nsbox("run", "--rm", "child:1", "cat", "/trig", "/from-child.txt").stdout
    assert out == "trig\nchild's\n"
    assert "OnBuild" not in section(nsbox, "child:1")["config"]  # triggers are not inherited


def test_api_build_with_progress(nsbox, tmp_path):
    import nsbox as api
    from nsbox.engine.containers import Engine

    ctx = make_context(tmp_path, "FROM busybox\nRUN echo api-run\nCMD [\"cat\", \"/etc/hostname\"]\n")
    engine = Engine(root=str(nsbox.root), run_root=str(nsbox.tmp / "run"))
    events: list[dict] = []
    image = api.build(str(ctx), tag="api:1", progress=events.append, engine=engine)
    assert events[-1] == {"aux": {"ID": image.id}}
    text = "".join(e["stream"] for e in events[:-1])
    assert "STEP 2/3: RUN echo api-run" in text and "api-run\n" in text
    assert image.repo_tags == ["localhost/api:1"]
    assert image.config["config"]["Cmd"] == ["cat", "/etc/hostname"]


@pytest.mark.skipif(not os.path.exists(REGISTRY) or not shutil.which("skopeo"),
                    reason="needs docker-registry and skopeo (scripts/apt-packages.txt)")
def test_from_a_registry_image_and_pull(nsbox, pushed, tmp_path):  # noqa: F811
    name = f"{pushed['host']}/test/bb:zstd"
    ctx = make_context(tmp_path, f"FROM {name}\nRUN echo from-registry > /r\n")
    out = nsbox("build", "--tls-verify=false", "-t", "r:1", str(ctx))
    assert "Trying to pull" in out.stdout
    assert nsbox("run", "--rm", "r:1", "cat", "/r").stdout == "from-registry\n"
    assert "Trying to pull" not in nsbox("build", "--tls-verify=false", str(ctx)).stdout
    again = nsbox("build", "--pull", "--tls-verify=false", str(ctx))  # pulled, still cached
    assert "Trying to pull" in again.stdout and "Using cache" in again.stdout


def test_run_network(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox\nRUN ls /sys/class/net > /nets\n")
    nsbox("build", "-q", "-t", "n:1", "--network", "none", str(ctx))
    assert nsbox("run", "--rm", "n:1", "cat", "/nets").stdout == "lo\n"
    nsbox("build", "-q", "--no-cache", "-t", "n:2", "--network", "host", str(ctx))
    host = sorted(os.listdir("/sys/class/net"))
    assert nsbox("run", "--rm", "n:2", "cat", "/nets").stdout.split() == host


def test_killed_build_is_swept_by_the_next(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox\nCOPY a.txt /\nRUN echo sta\"rted\"; sleep 120\n")
    nsbox("run", "--rm", "busybox", "true")
    proc = subprocess.Popen([*nsbox.prefix, "build", str(ctx)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=nsbox.env)
    try:
        deadline = time.monotonic() + 60
        while proc.stdout.readline() != b"started\n":
            assert time.monotonic() < deadline and proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert nsbox("ps", "-a", "-q").stdout.split()  # the RUN container outlived its build
    (ctx / "Containerfile").write_text("FROM busybox\nCOPY a.txt /\nRUN echo fine\n")
    out = nsbox("build", "-t", "k:1", str(ctx))
    assert "Using cache" in out.stdout  # the COPY layer the killed build made is whole
    assert nsbox("run", "--rm", "k:1", "cat", "/a.txt").stdout == "hello\n"
    assert leftovers(nsbox) == NOTHING


CRASH_POINTS = ("build.copy.written", "build.layer.staged", "build.layer.unpacked",
                "build.layer.recorded", "build.run.image", "build.run.started")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_any_point_leaves_nothing_trusted(nsbox, tmp_path, point):
    ctx = make_context(tmp_path, "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt > /r\n")
    nsbox("run", "--rm", "busybox", "true")
    proc = subprocess.run([*nsbox.prefix, "build", "-t", "x:1", str(ctx)], capture_output=True,
                          timeout=120, env={**nsbox.env, "NSBOX_TEST_CRASHPOINT": point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    out = nsbox("build", "-t", "x:1", str(ctx))
    if point == "build.layer.recorded":
        assert "Using cache" in out.stdout  # a recorded layer is whole, and used
    assert nsbox("run", "--rm", "x:1", "cat", "/r").stdout == (ctx / "a.txt").read_text()
    nsbox("image", "prune", "-f")  # the RUN's temporary image, if the crash left it
    assert leftovers(nsbox) == NOTHING
    layers = {p for p in os.listdir(nsbox.root / "layers") if len(p) == 64}
    kept = set()
    for record in (nsbox.root / "build-cache").iterdir():
        kept.update(h.removeprefix("sha256:") for h in json.loads(record.read_text())["layers"])
    for image in ImageStore(nsbox.root).images():
        kept.update(layer.chain_id.removeprefix("sha256:") for layer in image.layers)
    assert layers == kept  # no layer directory that nothing owns


def test_system_df_and_prune_all_drop_the_build_cache(nsbox, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox\nRUN head -c 100000 /dev/zero > /big\n")
    nsbox("build", "-q", "-t", "big:1", str(ctx))
    nsbox("rmi", "big:1")

    def df() -> dict:
        rows = [json.loads(line) for line in nsbox("system", "df", "--format", "json").stdout.splitlines()]
        return {row["Type"]: row for row in rows}

    usage = df()
    assert usage["Build Cache"]["TotalCount"] >= 1
    assert usage["Build Cache"]["Size"] >= 100000  # the RUN layer, now kept by the cache only
    assert usage["Images"]["TotalCount"] == 1 and usage["Images"]["Active"] == 0
    assert "Build Cache" in nsbox("system", "df").stdout
    nsbox("image", "prune", "-a", "-f")
    usage = df()
    assert usage["Build Cache"]["TotalCount"] == 0 and usage["Images"]["TotalCount"] == 0
    assert [p for p in os.listdir(nsbox.root / "layers") if len(p) == 64] == []
    assert "Using cache" not in nsbox("build", str(ctx)).stdout  # the cache is gone


# ------------------------------------------------------------------ buildah
def _normal(config: dict, history: list[dict]) -> dict:
    keys = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels", "Volumes",
            "StopSignal", "Healthcheck", "Shell")
    view = {}
    for key in keys:
        value = config.get(key)
        if key == "Labels" and value:
            value = {k: v for k, v in value.items() if k != "io.buildah.version"}
        view[key] = value or None
    # COPY entries name a digest of the copied files; each tool computes its own.
    view["history"] = [(re.sub(r"(file|dir|multi):[0-9a-f]{64}", r"\1:DIGEST", h.get("created_by", "")),
                        bool(h.get("empty_layer"))) for h in history]
    return view


def test_config_matches_buildah(nsbox, tmp_path):
    if not shutil.which("buildah"):
        pytest.skip("buildah is not installed (scripts/apt-packages.txt)")
    ctx = make_context(tmp_path)
    nsbox("run", "--rm", "busybox", "true")
    archive = tmp_path / "busybox.tar"
    nsbox("save", "--format", "oci-archive", "-o", str(archive), "busybox")
    buildah = ["buildah", "--storage-driver", "vfs", "--root", str(tmp_path / "broot"),
               "--runroot", str(tmp_path / "brun")]
    try:
        for target in ("base", "final"):
            proc = subprocess.run([*buildah, "bud", "--isolation", "chroot", "--layers",
                                   "--format", "docker", "--target", target,
                                   "--build-arg", f"BASE=oci-archive:{archive}",
                                   "-t", f"localhost/b-{target}", str(ctx)],
                                  capture_output=True, text=True, timeout=240)
            assert proc.returncode == 0, proc.stderr
            theirs = json.loads(subprocess.run([*buildah, "inspect", "--type", "image",
                                                f"localhost/b-{target}"], capture_output=True,
                                               text=True, check=True, timeout=60).stdout)["Docker"]
            nsbox("build", "-q", "--target", target, "-t", f"n-{target}", str(ctx))
            ours = section(nsbox, f"n-{target}")
            assert _normal(ours["config"], ours["history"]) == \
                _normal(theirs["config"], theirs["history"])
    finally:
        subprocess.run([*buildah, "rm", "--all"], capture_output=True, timeout=60)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4]
                if point.startswith(str(tmp_path / "b")):
                    subprocess.run(["umount", "-l", point], check=False)


# ------------------------------------------------------------------ rootless
@pytest.mark.skipif(not (shutil.which("newuidmap") and shutil.which("useradd")
                         and os.path.exists("/usr/bin/python3")),
                    reason="needs uidmap, useradd and /usr/bin/python3")
def test_rootless_build():
    from rootless_user import made_user

    with made_user("nsbox-build-t") as user:
        ctx = user.home / "ctx"
        ctx.mkdir()
        (ctx / "a.txt").write_text("rootless\n")
        (ctx / "Containerfile").write_text("FROM busybox\nCOPY a.txt /a.txt\n"
                                           "RUN cat /a.txt > /b.txt && rm /etc/group\n")
        for path in (ctx, ctx / "a.txt", ctx / "Containerfile"):
            os.chown(path, user.uid, user.gid)
        try:
            user.run("build", "-q", "--network", "none", "-t", "rl:1", str(ctx), timeout=120)
            again = user.run("build", "--network", "none", "-t", "rl:1", str(ctx), timeout=120)
            assert again.stdout.count("Using cache") == 2
            out = user.run("run", "--rm", "--network", "none", "rl:1", "sh", "-c",
                           "cat /b.txt; stat -c %u /a.txt; test -e /etc/group || echo gone")
            assert out.stdout == "rootless\n0\ngone\n"
        finally:
            user.remove_containers()
