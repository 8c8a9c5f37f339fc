"""The Containerfile/Dockerfile syntax: directives, continuations, instructions and their flags.

The grammar is Docker's (https://docs.docker.com/reference/dockerfile/), heredocs
excepted: a `# escape=` / `# syntax=` directive block at the top, comment lines,
lines continued with the escape character (backslash, or backtick), one
instruction per logical line, `--name=value` flags after the keyword, and the
exec form as a JSON array.  Every error names the file and the line the
instruction starts on, so `nsbox build` can report it on one line.
"""

from __future__ import annotations

import re

from nsbox import _json
from nsbox.errors import ConfigError

INSTRUCTIONS = ("FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                "HEALTHCHECK", "SHELL")
# The flags each instruction takes (name -> takes a value); anything else is an error.
FLAGS: dict[str, dict[str, bool]] = {
    "FROM": {"platform": True},
    # --link only changes how BuildKit stacks the layer, not what it holds: accepted.
    "COPY": {"from": True, "chown": True, "chmod": True, "link": False},
    "ADD": {"chown": True, "chmod": True, "link": False},
    "RUN": {"network": True},
    "HEALTHCHECK": {"interval": True, "timeout": True, "start-period": True, "retries": True,
                    "start-interval": True},
}
# Instructions whose arguments see build variables ($VAR) before they apply; RUN, CMD
# and ENTRYPOINT leave them to the shell, as Docker does.
EXPANDED = frozenset({"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                      "VOLUME", "WORKDIR", "ARG"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.+?)\s*$")


class BuildSyntaxError(ConfigError):
    """A Containerfile that cannot be parsed; the message starts with `FILE:LINE:`."""


class Instruction:
    """One logical line: KEYWORD, its flags, its argument text and where it started."""

    __slots__ = ("keyword", "flags", "args", "line", "original")

    def __init__(self, keyword: str, flags: dict[str, str], args: str, line: int,
                 original: str) -> None:
        self.keyword = keyword
        self.flags = flags
        self.args = args
        self.line = line
        self.original = original  # the text after the keyword, flags included

    def __repr__(self) -> str:
        return f"<{self.keyword} {self.original!r} @{self.line}>"

    def json_form(self) -> list[str] | None:
        """The exec form (a JSON array of strings), or None for the shell form."""
        return json_array(self.args)

    def text(self) -> str:
        return f"{self.keyword} {self.original}".rstrip()


def json_array(text: str) -> list[str] | None:
    stripped = text.strip()
    if not stripped.startswith("["):
        return None
    try:
        value = _json.loads(stripped)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def parse(text: str, filename: str = "Containerfile") -> tuple[list[Instruction], str]:
    """The instructions of TEXT and its escape character; BuildSyntaxError names FILE:LINE."""
    escape = "\\"
    lines = text.splitlines()
    index = 0
    seen: set[str] = set()
    # Directives: `# name=value` lines at the very top, before anything else.
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index].strip())
        if not match:
            break
        name, value = match.group(1).lower(), match.group(2)
        if name in seen:
            raise BuildSyntaxError(f"{filename}:{index + 1}: only one {name} directive can be used")
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise BuildSyntaxError(f"{filename}:{index + 1}: invalid escape token {value!r}: "
                                       "must be ` or \\")
            escape = value
        index += 1
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    instructions: list[Instruction] = []
    while index < len(lines):
        raw = lines[index]
        start = index + 1
        index += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        logical = raw.lstrip()
        while continued.search(logical):
            logical = continued.sub("", logical)
            # Comment and empty lines inside a continuation are dropped, as Docker does.
            while index < len(lines) and (not lines[index].strip()
                                          or lines[index].lstrip().startswith("#")):
                index += 1
            if index >= len(lines):
                break
            logical += lines[index]  # kept as written: history shows it so, as in buildah
            index += 1
        instructions.append(_instruction(logical.strip(), start, filename))
    if not instructions:
        raise BuildSyntaxError(f"{filename}:1: the file has no instructions")
    return instructions, escape


def _instruction(logical: str, line: int, filename: str) -> Instruction:
    word, _, rest = logical.partition(" ")
    if "\t" in word:
        word, _, more = word.partition("\t")
        rest = more + " " + rest
    keyword = word.upper()
    where = f"{filename}:{line}"
    if keyword not in INSTRUCTIONS:
        raise BuildSyntaxError(f"{where}: unknown instruction: {word}")
    original = rest.strip()
    flags: dict[str, str] = {}
    allowed = FLAGS.get(keyword, {})
    body = original
    while body.startswith("--"):
        token, _, after = body.partition(" ")
        if token == "--":
            break
        name, has_value, value = token[2:].partition("=")
        if name not in allowed:
            raise BuildSyntaxError(f"{where}: unknown flag: --{name} (for {keyword})")
        if allowed[name] and not has_value:
            raise BuildSyntaxError(f"{where}: {keyword} --{name} needs a value (--{name}=VALUE)")
        if name in flags:
            raise BuildSyntaxError(f"{where}: {keyword} --{name} given twice")
        flags[name] = value if has_value else "true"
        body = after.lstrip()
    if not body and keyword not in ("HEALTHCHECK",):
        raise BuildSyntaxError(f"{where}: {keyword} requires at least one argument")
    if keyword == "SHELL" and json_array(body) is None:
        raise BuildSyntaxError(f"{where}: SHELL requires the arguments as a JSON array")
    return Instruction(keyword, flags, body, line, original)


# ------------------------------------------------------------------ variables
def _lookup(name: str, env: dict[str, str]) -> str | None:
    return env.get(name)


def expand(text: str, env: dict[str, str], escape: str = "\\", words: bool = False,
           where: str = "") -> list[str] | str:
    """Quote removal and $VAR / ${VAR} / ${VAR:-w} / ${VAR:+w} expansion of TEXT.

    With WORDS, the result is split on unquoted whitespace (a list); otherwise one
    string.  Single quotes keep text literal, double quotes allow expansion, and
    the escape character makes the next one literal.
    """
    out: list[str] = []
    current: list[str] = []
    had_word = False
    i, n = 0, len(text)
    quote = ""

    def flush() -> None:
        nonlocal had_word
        if current or had_word:
            out.append("".join(current))
        current.clear()
        had_word = False

    while i < n:
        ch = text[i]
        if ch == escape and quote != "'" and i + 1 < n:
            nxt = text[i + 1]
            if quote == '"' and nxt not in ('"', "$", escape):
                current.append(ch)
            current.append(nxt)
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
                i += 1
                continue
            if ch == "$" and quote == '"':
                value, i = _variable(text, i, env, escape, where)
                current.append(value)
                continue
            current.append(ch)
            i += 1
            continue
        if ch in ("'", '"'):
            quote = ch
            had_word = True
            i += 1
            continue
        if words and ch in (" ", "\t", "\n"):
            flush()
            i += 1
            continue
        if ch == "$":
            value, i = _variable(text, i, env, escape, where)
            current.append(value)
            continue
        current.append(ch)
        i += 1
    if quote:
        raise BuildSyntaxError(f"{where}unterminated quote in {text!r}")
    if words:
        flush()
        return out
    return "".join(current)


def _variable(text: str, i: int, env: dict[str, str], escape: str, where: str) -> tuple[str, int]:
    """The value of the variable at TEXT[i] ('$'); and the index after it."""
    n = len(text)
    if i + 1 >= n:
        return "$", i + 1
    if text[i + 1] == "{":
        end = i + 2
        depth = 1
        while end < n and depth:
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
            end += 1
        if depth:
            raise BuildSyntaxError(f"{where}missing '}}' in {text!r}")
        inner = text[i + 2:end - 1]
        match = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(?::?([-+])(.*))?$", inner, re.DOTALL)
        if not match:
            raise BuildSyntaxError(f"{where}bad substitution ${{{inner}}}")
        name, op, word = match.groups()
        value = _lookup(name, env)
        colon = inner[len(name):len(name) + 1] == ":"
        if op == "-":
            if value is None or (colon and value == ""):
                return str(expand(word or "", env, escape, where=where)), end
        elif op == "+":
            if value is not None and not (colon and value == ""):
                return str(expand(word or "", env, escape, where=where)), end
            return "", end
        return value or "", end
    match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1:])
    if not match:
        return "$", i + 1
    return _lookup(match.group(0), env) or "", i + 1 + match.end()


def key_values(text: str, env: dict[str, str], escape: str, what: str,
               where: str = "") -> list[tuple[str, str]]:
    """ENV / LABEL arguments: `K=V K2="v 2"` pairs, or the legacy `K value words`."""
    words = expand(text, env, escape, words=True, where=where)
    assert isinstance(words, list)
    if not words:
        raise BuildSyntaxError(f"{where}{what} requires at least one argument")
    if "=" not in words[0]:
        key, _, rest = text.strip().partition(" ")
        if what == "LABEL" or not rest.strip():
            raise BuildSyntaxError(f"{where}{what} {key}: missing value (want KEY=VALUE)")
        return [(key, str(expand(rest.strip(), env, escape, where=where)))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise BuildSyntaxError(f"{where}{what}: {word!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs
