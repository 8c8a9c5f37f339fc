"""`nsbox build`: run a Containerfile's stages and store the target stage as an image.

Stages run in file order up to the target (the last, or --target).  Every
step's result is looked up in the build cache first (cache.py); a miss runs
the step: config instructions edit the config (instructions.py), RUN runs a
container and COPY/ADD writes files (layers.py, copysteps.py), each adding
one layer.  History entries follow buildah's (`/bin/sh -c #(nop) ENV ...`,
empty_layer for config-only steps), so `nsbox history` and the config
compare with buildah's for the same file.
"""

from __future__ import annotations

import os

from nsbox import _json
from nsbox._lazylog import get_logger
from nsbox.engine.images import config as imgconfig
from nsbox.engine.images.layout import oci_architecture
from nsbox.engine.images.reference import parse_name
from nsbox.errors import ConfigError, ImageNotFound

from .cache import BuildCache, State, step_key
from .context import find_containerfile, load_ignore
from .instructions import DEFAULT_PATH, DEFAULT_SHELL, ConfigStep, command_form, env_dict
from .layers import (
    commit_layer,
    history_entry,
    overlay_kind,
    run_container,
    store_image,
    sweep_leftovers,
)
from .parser import BuildSyntaxError, Instruction, expand, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nsbox.engine.images.records import Image

log = get_logger(__name__)

# Build arguments usable without an ARG line, and kept out of the history and the cache key.
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")
CONFIG_ONLY = frozenset({"ENV", "LABEL", "MAINTAINER", "WORKDIR", "CMD", "ENTRYPOINT", "SHELL",
                         "HEALTHCHECK", "USER", "STOPSIGNAL", "EXPOSE", "ONBUILD", "VOLUME"})


def platform_args() -> dict[str, str]:
    """The automatic platform ARGs (TARGETARCH, BUILDPLATFORM, ...): a build for this host."""
    arch = oci_architecture()
    values = {}
    for prefix in ("TARGET", "BUILD"):
        values.update({f"{prefix}PLATFORM": f"linux/{arch}", f"{prefix}OS": "linux",
                       f"{prefix}ARCH": arch, f"{prefix}VARIANT": ""})
    return values


class BuildOptions:
    """What `nsbox build` was asked for (flags of the CLI, keywords of nsbox.build())."""

    def __init__(self, *, tags: list[str] | None = None, build_args: dict[str, str] | None = None,
                 target: str | None = None, no_cache: bool = False, pull: bool = False,
                 labels: dict[str, str] | None = None, network: str | None = None,
                 tls_verify: bool | None = None) -> None:
        self.tags = [parse_name(tag).name for tag in tags or []]
        self.build_args = dict(build_args or {})
        self.target = target
        self.no_cache = no_cache
        self.pull = pull
        self.labels = dict(labels or {})
        self.network = network
        self.tls_verify = tls_verify


class Stage:
    __slots__ = ("index", "name", "base", "instructions", "line", "platform", "state")

    def __init__(self, index: int, name: str | None, base: str, line: int, platform: str) -> None:
        self.index = index
        self.name = name
        self.base = base
        self.instructions: list[Instruction] = []
        self.line = line
        self.platform = platform
        self.state: State | None = None


def split_stages(instructions: list[Instruction], filename: str) -> tuple[list[Instruction], list[Stage]]:
    """The ARGs before the first FROM, and the stages."""
    global_args: list[Instruction] = []
    stages: list[Stage] = []
    for ins in instructions:
        where = f"{filename}:{ins.line}: "
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = None
            if len(words) == 3 and words[1].upper() == "AS":
                name = words[2].lower()
                if any(s.name == name for s in stages):
                    raise BuildSyntaxError(f"{where}duplicate stage name {words[2]!r}")
            elif len(words) != 1:
                raise BuildSyntaxError(f"{where}FROM wants IMAGE [AS NAME]")
            stages.append(Stage(len(stages), name, words[0], ins.line, ins.flags.get("platform", "")))
            stages[-1].instructions.append(ins)
        elif not stages:
            if ins.keyword != "ARG":
                raise BuildSyntaxError(f"{where}{ins.keyword} before the first FROM "
                                       "(only ARG may come first)")
            global_args.append(ins)
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise BuildSyntaxError(f"{filename}:{instructions[-1].line}: no FROM instruction")
    return global_args, stages


def needed_stages(stages: list[Stage], target: Stage) -> set[int]:
    """Indexes of the stages TARGET needs (its FROM and COPY --from, transitively), as
    BuildKit builds them; a reference with a variable in it makes every earlier stage needed."""
    needed = {target.index}
    todo = [target]
    while todo:
        stage = todo.pop()
        refs = [stage.base] + [ins.flags["from"] for ins in stage.instructions if "from" in ins.flags]
        for ref in refs:
            if "$" in ref:
                found = stages[:stage.index]
            else:
                found = [s for s in stages[:stage.index]
                         if s.name == ref.lower() or str(s.index) == ref]
            for dep in found:
                if dep.index not in needed:
                    needed.add(dep.index)
                    todo.append(dep)
    return needed


def _arg_items(ins: Instruction, where: str) -> list[tuple[str, str | None]]:
    items = []
    for word in ins.args.split():
        name, has_default, default = word.partition("=")
        if not name or not (name[0].isalpha() or name[0] == "_") or \
                not all(c.isalnum() or c == "_" for c in name):
            raise BuildSyntaxError(f"{where}ARG: invalid name {name!r}")
        items.append((name, default if has_default else None))
    return items


class Builder:
    """One build: EMIT(text) gets the progress lines and the RUN output."""

    def __init__(self, engine, context_dir: str, containerfile: str | None,  # noqa: ANN001
                 options: BuildOptions, emit: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.store = engine.images
        self.context_dir = os.path.abspath(context_dir)
        if not os.path.isdir(self.context_dir):
            raise ConfigError(f"the build context {context_dir} is not a directory")
        self.file = find_containerfile(self.context_dir, containerfile)
        self.filename = os.path.basename(self.file)
        self.options = options
        self.emit = emit or (lambda text: None)
        self.cache = BuildCache(self.store)
        self.ignore = load_ignore(self.context_dir)
        self.escape = "\\"
        self.stages: list[Stage] = []
        self.used_args: set[str] = set()

    # ---------------------------------------------------------------- helpers
    def cached(self, key: str) -> State | None:
        return None if self.options.no_cache else self.cache.get(key)

    def where(self, ins: Instruction) -> str:
        return f"{self.filename}:{ins.line}: "

    def _image_state(self, ref: str, pull: bool) -> State:
        from nsbox.engine.images.ensure import ensure_image

        def pull_image(store, name: str):  # noqa: ANN001, ANN202
            self.emit(f"Trying to pull {name}...\n")
            return store.pull(name, tls_verify=self.options.tls_verify)
        ensure_image(self.store, ref, pull="always" if pull else "missing", pull_image=pull_image)
        image = self.store.resolve(ref)
        return State(list(image.layers), _json.loads(_json.dumps(image.config)))

    def source_state(self, ref: str, where: str) -> State:
        """The state COPY --from=REF reads: a stage (name or index) built before, or an image."""
        for stage in self.stages:
            if stage.state is not None and (stage.name == ref.lower() or str(stage.index) == ref):
                return stage.state
        if ref.isdigit():
            raise BuildSyntaxError(f"{where}--from={ref}: no stage {ref} before this one")
        try:
            return self._image_state(ref, False)
        except ImageNotFound as err:
            raise ImageNotFound(f"{where}--from={ref}: {err}") from None

    def _base_state(self, stage: Stage, global_vars: dict[str, str]) -> State:
        where = f"{self.filename}:{stage.line}: "
        base = str(expand(stage.base, global_vars, self.escape, where=where))
        if stage.platform:
            platform = str(expand(stage.platform, {**platform_args(), **global_vars}, self.escape,
                                  where=where))
            if platform != f"linux/{oci_architecture()}":
                raise BuildSyntaxError(f"{where}FROM --platform={platform}: only this host's "
                                       f"platform (linux/{oci_architecture()}) can be built")
        if base.lower() == "scratch":
            # No `created` of its own: the same empty base every time, so its steps cache.
            return State([], {"architecture": oci_architecture(), "os": "linux",
                              "config": {"Env": [DEFAULT_PATH]},
                              "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
        for earlier in self.stages[:stage.index]:
            if earlier.name == base.lower() and earlier.state is not None:
                return earlier.state.copy()
        return self._image_state(base, self.options.pull)

    # ---------------------------------------------------------------- build
    def build(self) -> Image:
        with open(self.file, encoding="utf-8", errors="replace") as f:
            text = f.read()
        instructions, self.escape = parse(text, self.filename)
        global_args, stages = split_stages(instructions, self.filename)
        self.stages = stages
        target = stages[-1]
        if self.options.target:
            matches = [s for s in stages if s.name == self.options.target.lower()]
            if not matches:
                raise ConfigError(f"--target {self.options.target}: no stage of that name")
            target = matches[0]
        # Every step is checked before anything runs: a syntax error costs nothing.
        for stage in stages:
            for ins in stage.instructions:
                if ins.keyword == "ARG":
                    _arg_items(ins, self.where(ins))
        sweep_leftovers(self.engine)
        global_vars: dict[str, str] = {}
        global_defaults: dict[str, str | None] = {}
        for ins in global_args:
            for name, default in _arg_items(ins, self.where(ins)):
                value: str | None
                if name in self.options.build_args:  # a --build-arg value is taken literally
                    value = self.options.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    value = str(expand(default, global_vars, self.escape, where=self.where(ins)))
                else:
                    value = None
                global_defaults[name] = value
                if value is not None:
                    global_vars[name] = value
        needed = needed_stages(stages, target)
        for position, stage in enumerate(s for s in stages if s.index in needed):
            stage.state = self._run_stage(stage, position, len(needed), global_vars,
                                          global_defaults)
        unused = sorted(set(self.options.build_args) - self.used_args - set(PROXY_ARGS))
        if unused:
            self.emit(f"[Warning] one or more build args were not consumed: {unused}\n")
        final = target.state.copy()  # type: ignore[union-attr]
        if self.options.labels:
            labels = dict(final.section.get("Labels") or {})
            labels.update(self.options.labels)
            final.section["Labels"] = labels
        final.config["config"] = imgconfig.clean_section(final.section)
        for tag in self.options.tags:
            self.emit(f"COMMIT {tag}\n")
        image, _ = store_image(self.store, final, self.options.tags)
        for tag in self.options.tags:
            self.emit(f"Successfully tagged {tag}\n")
        return image

    def _run_stage(self, stage: Stage, position: int, total_stages: int,
                   global_vars: dict[str, str], global_defaults: dict[str, str | None]) -> State:
        state = self._base_state(stage, global_vars)
        scope: dict[str, str | None] = {}
        cmd_set = False
        count = len(stage.instructions)
        for number, ins in enumerate(stage.instructions, 1):
            self.emit(f"[{position + 1}/{total_stages}] STEP {number}/{count}: {ins.keyword} "
                      f"{ins.original}\n")
            if ins.keyword == "FROM":
                state = self._onbuild(ins, state, scope, global_defaults)
                continue
            state, cached = self._step(ins, state, scope, global_defaults, cmd_set)
            if ins.keyword == "CMD":
                cmd_set = True
            self.emit(f"--> {'Using cache ' if cached else ''}{state.id.removeprefix('sha256:')[:12]}\n")
        return state

    def _onbuild(self, from_ins: Instruction, state: State, scope: dict[str, str | None],
                 global_defaults: dict[str, str | None]) -> State:
        """Run the base image's ONBUILD triggers, as Docker does; the new image has none."""
        triggers = state.section.get("OnBuild") or []
        if not triggers:
            return state
        state = state.copy()
        state.section.pop("OnBuild", None)
        where = self.where(from_ins)
        for text in triggers:
            try:
                (trigger,), _ = parse(text, self.filename)
            except ValueError:
                raise BuildSyntaxError(f"{where}ONBUILD trigger {text!r}: one instruction "
                                       "expected") from None
            if trigger.keyword in ("FROM", "ONBUILD", "MAINTAINER"):
                raise BuildSyntaxError(f"{where}ONBUILD trigger {text!r}: {trigger.keyword} "
                                       "is not allowed as a trigger")
            trigger.line = from_ins.line
            self.emit(f"--> ONBUILD {trigger.keyword} {trigger.original}\n")
            state, _ = self._step(trigger, state, scope, global_defaults, False)
        return state

    def _variables(self, state: State, scope: dict[str, str | None]) -> dict[str, str]:
        values = {k: v for k, v in scope.items() if v is not None}
        values.update(env_dict(state.section))  # ENV wins over ARG, as in Docker
        return values

    def _step(self, ins: Instruction, state: State, scope: dict[str, str | None],
              global_defaults: dict[str, str | None], cmd_set: bool) -> tuple[State, bool]:
        where = self.where(ins)
        if ins.keyword == "ARG":
            names = []
            for name, default in _arg_items(ins, where):
                if name in self.options.build_args:
                    value: str | None = self.options.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    value = str(expand(default, self._variables(state, scope), self.escape,
                                       where=where))
                elif name in global_defaults:
                    value = global_defaults[name]
                else:
                    value = platform_args().get(name)
                scope[name] = value
                names.append(name)
            return self._config_step(ins, state, scope, cmd_set, f"ARG {' '.join(names)}")
        if ins.keyword in CONFIG_ONLY:
            return self._config_step(ins, state, scope, cmd_set, f"{ins.keyword} {ins.original}")
        if ins.keyword == "RUN":
            return self._run_step(ins, state, scope)
        if ins.keyword in ("COPY", "ADD"):
            from .copysteps import copy_step
            return copy_step(self, ins, state, self._variables(state, scope), where)
        raise BuildSyntaxError(f"{where}{ins.keyword} is not supported")

    def _config_step(self, ins: Instruction, state: State, scope: dict[str, str | None],
                     cmd_set: bool, shown: str) -> tuple[State, bool]:
        variables = self._variables(state, scope)
        key = step_key(state, f"{ins.keyword} {ins.original}",
                       {"vars": variables, "cmd_set": cmd_set})
        cached = self.cached(key)
        if cached is not None:
            return cached, True
        result = state.copy()
        if ins.keyword != "ARG":
            ConfigStep(self.escape, self.where(ins)).apply(ins, result.config, variables, cmd_set)
        result.config["config"] = imgconfig.clean_section(result.section)
        entry = history_entry(f"/bin/sh -c #(nop) {shown.rstrip()}", True)
        result.config["created"] = entry["created"]
        result.config["history"] = [*(result.config.get("history") or []), entry]
        self.cache.put(key, result)
        return result, False

    def _run_step(self, ins: Instruction, state: State,
                  scope: dict[str, str | None]) -> tuple[State, bool]:
        argv = command_form(ins, state.section)
        env = env_dict(state.section)
        args = {k: v for k, v in scope.items() if v is not None and k not in env}
        for name in PROXY_ARGS:  # usable without an ARG line
            if name in self.options.build_args and name not in env:
                args.setdefault(name, self.options.build_args[name])
                self.used_args.add(name)
        shown = {k: v for k, v in sorted(args.items()) if k not in PROXY_ARGS}
        prefix = f"|{len(shown)} " + " ".join(f"{k}={v}" for k, v in shown.items()) + " " \
            if shown else ""
        # buildah's form: the shell, then the instruction as written (exec form included).
        created_by = prefix + " ".join(state.section.get("Shell") or DEFAULT_SHELL) + " " + ins.args
        key = step_key(state, f"RUN {ins.original}", {"argv": argv, "args": shown,
                                                      "network": ins.flags.get("network")})
        cached = self.cached(key)
        if cached is not None:
            return cached, True

        def output(stream: str, data: bytes) -> None:
            self.emit(data.decode("utf-8", "replace"))

        def then(upper: str) -> State:
            return commit_layer(self.store, self.cache, key, upper, state,
                                history_entry(created_by, False), overlay_kind())

        network = ins.flags.get("network") or self.options.network
        what = f"{self.where(ins)}RUN {ins.original}"
        return run_container(self.engine, state, argv, args, network, output, then, what), False


def build(engine, context_dir: str, containerfile: str | None = None,  # noqa: ANN001
          options: BuildOptions | None = None,
          emit: Callable[[str], None] | None = None) -> Image:
    """Build CONTEXT_DIR's Containerfile (or CONTAINERFILE) into an image of ENGINE's store."""
    return Builder(engine, context_dir, containerfile, options or BuildOptions(), emit).build()
