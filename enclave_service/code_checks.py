"""Static checks of a submitted analysis before it is built and run against real data.

The enclave has no network and no secrets (W2), but checks still matter: a run that tries to reach the
network, spawn a shell, install packages or load native code is either broken there or trying to get
out, and a reviewer should know before real data is touched. The R code is read with R's own parser
(``r/parse_calls.R``: ``parse()`` + ``getParseData()``; nothing is evaluated), so a comment mentioning
``system(``, a variable called ``system_total`` or a call split over lines are judged by what they are,
not by how they look. Rules are data (:class:`CallRule`, :class:`CodeRules`) so a deployment can tune them.

Secrets are searched in *every* text file, with the secret masked in what we report (never echoed).
``.Renviron`` is where the workspace keeps the analysis' synthetic-data key (``ANALYSIS_API_KEY``), so
that one assignment is allowed there; ``archive.DEFAULT_EXCLUDE`` keeps ``.Renviron`` out of archives
altogether, and a run needs no key: the service stages the real data as files.

**These checks are advisory.** R can compute the name of what it calls (``get(paste0(...))``,
``match.fun``, ``do.call`` with a computed name, ``eval``), so no static check can prove what a
program will do; what holds is the container (no network, no host files, limits). The checks tell
the reviewers what to look at, and the indirection patterns are flagged ``review`` for that reason.

Infrastructure trouble (Rscript missing, crashing, timing out) is reported as a ``fail`` finding with
rule ``check-error``: the checks fail closed, and the message says it is not the researcher's fault.
"""

from __future__ import annotations

import asyncio
import fnmatch
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import proc

PARSER = Path(__file__).with_name("r") / "parse_calls.R"
R_SUFFIXES = (".r", ".rmd", ".qmd")
SKIP_DIRS = (".git", ".cache", ".Rproj.user", "node_modules")
SKIP_PATHS = ("renv/library", "renv/staging", ".local/share/renv", ".local/share/rstudio")
LOADERS = {"library", "require", "requireNamespace", "loadNamespace", "attachNamespace", "p_load"}
INDIRECT = {
    "do.call",
    "match.fun",
    "get",
    "get0",
    "getFunction",
    "mget",
    "Reduce",
    "Map",
    "Filter",
    "lapply",
    "sapply",
    "vapply",
    "mapply",
    "getExportedValue",
}
URL = re.compile(r"^\s*(https?|ftps?|sftp|ssh|s3|gs|wss?)://", re.I)


@dataclass(frozen=True)
class CallRule:
    """A named rule: calling (or referring to) any of ``calls`` — ``fn``, ``pkg::fn``, ``pkg::*``, globs
    allowed — or loading any of ``packages`` gives a finding of ``severity``. ``pkg::fn`` patterns also
    match a bare ``fn(...)`` (the package may be attached); ``pkg::*`` matches only namespaced uses."""

    name: str
    severity: str
    message: str
    calls: tuple[str, ...]
    packages: tuple[str, ...] = ()


DEFAULT_CALL_RULES: tuple[CallRule, ...] = (
    CallRule(
        "network",
        "fail",
        "reaches the network, which the enclave does not have",
        (
            "download.file",
            "download.packages",
            "url",
            "curlGetHeaders",
            "nsl",
            "utils::nsl",
            "socketConnection",
            "make.socket",
            "serverSocket",
            "socketAccept",
            "curl::*",
            "httr::*",
            "httr2::*",
            "RCurl::*",
            "crul::*",
            "jsonlite::read_json",
        ),
        ("curl", "httr", "httr2", "RCurl", "crul", "RSelenium", "rvest"),
    ),
    CallRule(
        "shell",
        "fail",
        "runs a shell or another process",
        ("system", "system2", "shell", "shell.exec", "pipe", "processx::*", "sys::*", "callr::*"),
        ("processx", "sys", "callr"),
    ),
    CallRule(
        "package-install",
        "fail",
        "installs packages at run time; list them in renv.lock instead (the image restores it)",
        (
            "install.packages",
            "update.packages",
            "remotes::install_*",
            "devtools::install*",
            "renv::install",
            "renv::restore",
            "renv::update",
            "BiocManager::install",
            "pak::*",
        ),
        ("remotes", "devtools", "pak"),
    ),
    CallRule(
        "native-code",
        "fail",
        "loads native code, which the checks cannot see into",
        (
            "dyn.load",
            "library.dynam",
            "Rcpp::sourceCpp",
            "Rcpp::cppFunction",
            "Rcpp::evalCpp",
            "inline::cfunction",
            "inline::cxxfunction",
        ),
        ("inline",),
    ),
    CallRule(
        "native-interface", "review", "calls compiled code directly", (".C", ".Call", ".External", ".Fortran")
    ),
    CallRule(
        "working-directory",
        "review",
        "changes the working directory; paths may leave the project",
        ("setwd",),
    ),
    CallRule(
        "environment",
        "review",
        "reads environment variables; a run gets none but HOME, LANG, TZ and "
        "TMPDIR (the real data comes as files, never as a key)",
        ("Sys.getenv",),
    ),
    CallRule(
        "dynamic-code",
        "review",
        "runs code built from text, which cannot be checked",
        ("eval", "evalq", "eval.parent", "base::eval", "rlang::eval_tidy", "rlang::parse_expr"),
    ),
)


@dataclass
class CodeRules:
    """Everything :func:`check_code` judges by. Defaults are the enclave's policy."""

    calls: tuple[CallRule, ...] = DEFAULT_CALL_RULES
    url_severity: str = "fail"  # a string constant that is a network address, anywhere in R code
    # Absolute paths under these roots are a fail (system files); other paths leaving the project review.
    system_roots: tuple[str, ...] = ("/etc", "/proc", "/sys", "/dev", "/root", "/run", "/boot", "/var")
    outside_severity: str = "review"
    # indirection: a call whose target is computed at run time (get(paste0(...)), match.fun(x),
    # do.call(paste0(...), ...)) cannot be judged statically
    computed_targets: tuple[str, ...] = (
        "get",
        "get0",
        "mget",
        "match.fun",
        "getFunction",
        "do.call",
        "getExportedValue",
        "exists",
    )
    indirection_severity: str = "review"
    rscript: str = "Rscript"
    timeout: float = 60.0  # seconds for the whole parse
    max_scan_bytes: int = 5 * 2**20  # larger text files are not searched for secrets (reported)


@dataclass
class Finding:
    file: str
    line: int
    rule: str
    severity: str  # "fail" | "review"
    message: str
    snippet: str = ""


@dataclass
class CodeReport:
    verdict: str  # "pass" | "review" | "fail"
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "findings": [asdict(f) for f in self.findings]}

    @classmethod
    def of(cls, findings: list[Finding]) -> CodeReport:
        findings = sorted(findings, key=lambda f: (f.file, f.line, f.rule))
        sev = {f.severity for f in findings}
        return cls("fail" if "fail" in sev else "review" if "review" in sev else "pass", findings)


def _project_files(root: Path) -> list[str]:
    """Relative posix paths of regular files, sorted, skipping VCS/cache/library folders and links."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not any((rel_dir + d).endswith(p) for p in SKIP_PATHS)
        )
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out.append(rel_dir + name)
    return sorted(out)


def _is_r(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.lower().endswith(R_SUFFIXES) or name == ".Rprofile"


def _unesc(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), s)


async def _run_parser(paths: list[Path], rules: CodeRules) -> tuple[dict[int, list], dict[int, tuple]]:
    """Tokens and parse errors per file index (0-based), from one Rscript process."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "R_LIBS_USER": "",
        "HOME": "/nonexistent",
    }  # nothing of the caller's environment leaks in
    try:
        rc, out, err = await proc.run(
            [rules.rscript, "--vanilla", str(PARSER)],
            rules.timeout,
            input="".join(f"{p}\n" for p in paths).encode(),
            env=env,
            cwd="/",
        )
    except proc.CommandTimeout:
        raise RuntimeError(f"the R parser took longer than {rules.timeout:.0f} s") from None
    if rc != 0:
        raise RuntimeError(f"the R parser failed: {err.decode(errors='replace').strip()[-300:]}")
    tokens: dict[int, list] = {}
    errors: dict[int, tuple] = {}
    for raw in out.decode("utf-8", errors="replace").splitlines():
        parts = raw.split("\t")
        if parts[0] == "T" and len(parts) == 5:
            tokens.setdefault(int(parts[1]) - 1, []).append((int(parts[2]), parts[3], _unesc(parts[4])))
        elif parts[0] == "E" and len(parts) == 4:
            errors[int(parts[1]) - 1] = (int(parts[2]), _unesc(parts[3]))
    return tokens, errors


def _matches(pattern: str, name: str, ns: str | None) -> bool:
    if "::" not in pattern:
        return fnmatch.fnmatchcase(name, pattern)
    pns, pfn = pattern.split("::", 1)
    if ns is None:
        return pfn != "*" and fnmatch.fnmatchcase(name, pfn)
    return ns == pns and fnmatch.fnmatchcase(name, pfn)


def _call_rule(rules: CodeRules, name: str, ns: str | None) -> CallRule | None:
    for rule in rules.calls:
        if any(_matches(p, name, ns) for p in rule.calls):
            return rule
    return None


def _string_finding(rules: CodeRules, value: str) -> tuple[str, str, str] | None:
    """(rule, severity, message) for a string constant that is a URL or a path leaving the project."""
    v = value.strip()
    if URL.match(v):
        return "network", rules.url_severity, "network address in the code; the enclave has no network"
    if re.match(r"^/[A-Za-z0-9._~-]", v) and "\n" not in v:
        if any(v == r or v.startswith(r + "/") for r in rules.system_roots):
            return "outside-project", "fail", "refers to a system file outside the project"
        return "outside-project", rules.outside_severity, "absolute path: only the project is in the enclave"
    if v == "~" or v.startswith(("~/", "~\\")) or re.match(r"^[A-Za-z]:[\\/]", v):
        return "outside-project", rules.outside_severity, "path outside the project (home or drive)"
    if ".." in re.split(r"[\\/]", v):
        return "outside-project", rules.outside_severity, "path that climbs out of its folder ('..')"
    return None


def _analyse(rel: str, toks: list, lines: list[str], rules: CodeRules) -> list[Finding]:
    """Walk the token stream once, tracking which call each token sits in."""
    found: list[Finding] = []
    by_name = {r.name: r for r in rules.calls}

    def add(line: int, rule: str, severity: str, message: str) -> None:
        text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        found.append(Finding(rel, line, rule, severity, message, mask_line(text)[:200]))

    stack: list[str | None] = []
    pending: str | None = None
    opened: str | None = None  # the call whose '(' the previous token was
    path_call: list | None = None  # file.path("", ...): the pieces seen so far
    for i, (line, tok, val) in enumerate(toks):
        first_arg_of, opened = opened, None
        if first_arg_of in rules.computed_targets and (
            tok == "SYMBOL_FUNCTION_CALL" or (tok == "SYMBOL" and first_arg_of != "do.call")
        ):
            what = f"{val}(...)" if tok == "SYMBOL_FUNCTION_CALL" else f"the variable {val}"
            add(
                line,
                "indirection",
                rules.indirection_severity,
                f"{first_arg_of}() is given {what}: the function or object it reaches is computed at run "
                "time, so the checks cannot see what it is",
            )
        if first_arg_of == "file.path" and tok == "STR_CONST" and val == "":
            path_call = [line, len(stack)]
        elif path_call is not None and tok == "STR_CONST" and len(stack) == path_call[1]:
            root = "/" + val.strip("/")
            severity = "fail" if root in rules.system_roots else rules.outside_severity
            add(
                path_call[0],
                "outside-project",
                severity,
                f'file.path("", "{val}", ...) builds an absolute path: only the project is in the enclave',
            )
            path_call = None
        elif path_call is not None and len(stack) < path_call[1]:
            path_call = None
        prev = toks[i - 1][1] if i else ""
        ns = toks[i - 2][2] if i >= 2 and prev in ("NS_GET", "NS_GET_INT") else None
        top = stack[-1] if stack else None
        if tok == "SYMBOL_FUNCTION_CALL" or (tok == "SYMBOL" and ns):
            name = val.strip("`")
            shown = f"{ns}::{name}" if ns else name
            rule = _call_rule(rules, name, ns)
            if rule:
                verb = "calls" if tok == "SYMBOL_FUNCTION_CALL" else "refers to"
                add(line, rule.name, rule.severity, f"{verb} {shown}(): {rule.message}")
            pending = name if tok == "SYMBOL_FUNCTION_CALL" else None
            if name in ("str2lang", "str2expression") and "dynamic-code" in by_name:
                r = by_name["dynamic-code"]
                add(line, r.name, r.severity, f"calls {name}(): {r.message}")
            continue
        if tok == "'('":
            stack.append(pending)
            opened = pending
        elif tok == "')'" and stack:
            stack.pop()
        elif tok == "SYMBOL_SUB" and val == "text" and top == "parse" and "dynamic-code" in by_name:
            r = by_name["dynamic-code"]
            add(line, r.name, r.severity, f"parse(text = ...): {r.message}")
        elif tok in ("SYMBOL", "STR_CONST"):
            if top in LOADERS:
                for rule in rules.calls:
                    if val in rule.packages:
                        add(line, rule.name, rule.severity, f"loads package {val}: {rule.message}")
            if any(c in INDIRECT for c in stack):
                rule = _call_rule(rules, val.strip("`"), None)
                if rule:
                    add(line, rule.name, rule.severity, f"uses {val} indirectly: {rule.message}")
            if tok == "STR_CONST":
                hit = _string_finding(rules, val)
                if hit:
                    add(line, *hit)
        pending = None
    return found


def _read_text(path: Path, limit: int) -> str | None:
    """The file as text, or None when it looks binary (a NUL byte near the start)."""
    with open(path, "rb") as fh:
        data = fh.read(limit)
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def _scan_files(root: Path, files: list[str], rules: CodeRules) -> tuple[list[Finding], dict[str, str]]:
    """Blocking part: secrets in every text file; the text of the R files (for snippets)."""
    found, texts = [], {}
    for rel in files:
        p = root / rel
        try:
            text = _read_text(p, rules.max_scan_bytes + 1)
        except OSError as e:
            found.append(Finding(rel, 0, "unreadable", "fail", f"cannot be read: {e.strerror}"))
            continue
        if text is None:
            continue
        if len(text) > rules.max_scan_bytes:
            found.append(
                Finding(
                    rel,
                    0,
                    "too-large-to-scan",
                    "review",
                    f"larger than {rules.max_scan_bytes} bytes: not searched for secrets",
                )
            )
        name = rel.rsplit("/", 1)[-1]
        for line, rule, message, snippet in scan_text(text, name):
            found.append(Finding(rel, line, rule, "fail", message, snippet))
        if _is_r(rel) and re.search(r"[\n\r\t]", rel):  # would break the one-path-per-line protocol
            found.append(
                Finding(
                    rel.encode("unicode_escape").decode(),
                    0,
                    "file-name",
                    "fail",
                    "R file name contains a line break or tab; rename it",
                )
            )
        elif _is_r(rel):
            texts[rel] = text
    return found, texts


async def check_code(project_dir, rules: CodeRules | None = None) -> CodeReport:
    """Check every R source (parsed by R) and every text file (secrets) under ``project_dir``."""
    rules = rules or CodeRules()
    root = Path(project_dir)
    if not await asyncio.to_thread(root.is_dir):
        return CodeReport.of([Finding(".", 0, "check-error", "fail", "the project folder does not exist")])
    files = await asyncio.to_thread(_project_files, root)
    findings, texts = await asyncio.to_thread(_scan_files, root, files, rules)
    r_files = sorted(texts)
    if r_files:
        try:
            tokens, errors = await _run_parser([root / f for f in r_files], rules)
        except (OSError, RuntimeError) as e:
            msg = f"the code could not be checked ({e}); this is not a problem with your analysis"
            return CodeReport.of(findings + [Finding(".", 0, "check-error", "fail", msg)])
        for i, rel in enumerate(r_files):
            lines = texts[rel].splitlines()
            if i in errors:
                line, msg = errors[i]
                msg = re.sub(r"^<text>:\d+:\d+: ", "", msg).splitlines()[0]
                snippet = lines[line - 1].strip() if 0 < line <= len(lines) else ""
                findings.append(
                    Finding(
                        rel, line, "parse-error", "fail", f"does not parse: {msg}", mask_line(snippet)[:200]
                    )
                )
            else:
                findings.extend(_analyse(rel, tokens.get(i, []), lines, rules))
    return CodeReport.of(findings)


# ------------------------------------------------------------------------------------------ secrets scan
# (rule, regex, group holding the secret, characters of the secret that may be shown: structural prefixes)
SECRET_PATTERNS: tuple[tuple[str, re.Pattern, int, int], ...] = (
    ("aws-access-key-id", re.compile(r"\b((?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|AIPA)[A-Z0-9]{16})\b"), 1, 4),
    ("aws-secret-key", re.compile(r"(?i)aws_?secret_?access_?key\W{0,5}([A-Za-z0-9/+=]{40})\b"), 1, 0),
    ("github-token", re.compile(r"\b((?:gh[pousr]_[A-Za-z0-9]{36,})|github_pat_[A-Za-z0-9_]{22,})"), 1, 4),
    ("slack-token", re.compile(r"\b(xox[abposr]-[A-Za-z0-9-]{10,})"), 1, 4),
    ("google-api-key", re.compile(r"\b(AIza[0-9A-Za-z_-]{35})"), 1, 4),
    ("analysis-api-key", re.compile(r"\bANALYSIS_API_KEY\s*(?:=|<-|:)\s*[\"']?([A-Za-z0-9_-]{6,})"), 1, 0),
    (
        "password",
        re.compile(
            r"(?i)\b\w*(?:password|passwd|pwd|secret|token|api_?key|access_?key)\w*"
            r"[\"']?\s*(?:=|<-|:)\s*[\"']([^\"'\s]{4,})[\"']"
        ),
        1,
        0,
    ),
)
PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----")
TOKEN = re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}")
DATA_SUFFIXES = (".csv", ".tsv", ".lock")  # data and lock files are full of ids/hashes: no entropy rule
MIN_ENTROPY = 4.3  # bits per character; hex hashes (<= 4.0) and dictionary words stay below


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    return -sum(c / len(s) * math.log2(c / len(s)) for c in Counter(s).values())


def _random_looking(tok: str) -> bool:
    return (
        entropy(tok) >= MIN_ENTROPY
        and any(c.isdigit() for c in tok)
        and any(c.isupper() for c in tok)
        and any(c.islower() for c in tok)
    )


def _mask(secret: str, keep: int) -> str:
    return f"{secret[:keep]}****[{len(secret)} characters masked]"


def _secrets_in_line(line: str, filename: str, entropy_rule: bool) -> list[tuple[str, int, int, int]]:
    """(rule, start, end, keep) for each secret in ``line``."""
    hits = []
    for rule, rx, group, keep in SECRET_PATTERNS:
        for m in rx.finditer(line):
            if not any(s <= m.start(group) < e for _, s, e, _ in hits):
                hits.append((rule, m.start(group), m.end(group), keep))
    if entropy_rule:
        for m in TOKEN.finditer(line):
            if _random_looking(m.group()) and not any(s < m.end() and m.start() < e for _, s, e, _ in hits):
                hits.append(("high-entropy-token", m.start(), m.end(), 0))
    if filename == ".Renviron":  # the workspace's own synthetic-data key lives here by design
        hits = [h for h in hits if h[0] != "analysis-api-key"]
    return sorted(hits, key=lambda h: h[1])


def mask_line(line: str, filename: str = "", entropy_rule: bool = True) -> str:
    """``line`` with every secret in it masked; used for every snippet we report."""
    if PRIVATE_KEY.search(line):
        return PRIVATE_KEY.sub(lambda m: f"-----BEGIN {m.group(1)}----- [key masked]", line)[:200]
    for _, s, e, keep in reversed(_secrets_in_line(line, filename, entropy_rule)):
        line = line[:s] + _mask(line[s:e], keep) + line[e:]
    return line


def scan_text(text: str, filename: str) -> list[tuple[int, str, str, str]]:
    """(line, rule, message, masked snippet) for each secret; key blocks are reported once."""
    found, in_key = [], False
    entropy_rule = not filename.lower().endswith(DATA_SUFFIXES)
    for n, line in enumerate(text.splitlines(), 1):
        if in_key:
            in_key = "-----END" not in line
            continue
        m = PRIVATE_KEY.search(line)
        if m:
            in_key = "-----END" not in line[m.end() :]
            found.append(
                (
                    n,
                    "private-key",
                    f"a {m.group(1).lower()} is in the project; remove it",
                    mask_line(line.strip()),
                )
            )
            continue
        for rule, s, e, keep in _secrets_in_line(line, filename, entropy_rule):
            found.append(
                (
                    n,
                    rule,
                    f"looks like a secret ({rule}: {_mask(line[s:e], keep)}); remove it from the project",
                    mask_line(line.strip(), filename, entropy_rule)[:200],
                )
            )
    return found
