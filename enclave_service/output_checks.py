"""Statistical disclosure checks of a run's outputs before a human reviews them.

Every released file is seen by a reviewer; these checks decide what the reviewer is *warned* about
(``review``) and what cannot be released at all (``fail``), in the spirit of ACRO's named thresholds
(AI-SDC/ACRO ``default.yaml``: ``safe_threshold: 10``, ``safe_nk_n: 2``, ``safe_nk_k: 0.9``, zeros
flagged). They see only the output files, not the microdata, so they are deliberately conservative:

- type: only the suffixes in :attr:`OutputRules.allowed_suffixes`, and the content must agree with the
  suffix (a ``.csv`` that is a zip, an ELF binary or an R data file fails). HTML is *not* allowed by
  default: it can carry scripts and htmlwidgets embed the full data behind a plot. Figures (png, jpeg,
  pdf) cannot be checked automatically, so they are always ``review``; so is free text.
- size and, for tables, row count: large or long outputs are row-level data, not aggregates.
- identifiers: a column named like an identifier, or whose values look like emails, UUIDs, IP addresses
  or id codes, fails.
- frequency tables: count-like columns (named n/count/freq/total… or integer columns beside categorical
  ones); any cell with ``0 < count < min_cell_count`` fails — margins (rows or columns named Total/All/
  Sum) are checked like every other cell, so a small total cannot slip out next to suppressed cells.
  A zero count is ``review`` (structural zeros can disclose, e.g. "nobody in group X passed").
- magnitude tables (sum/mean/amount… columns): when the ``dominance_n`` largest cells hold more than
  ``dominance_k`` of a column's total, ``review``; statistics without any count column are ``review``
  too, since group sizes cannot be checked.
- a file byte-identical to one already released is ``review`` (re-release, or a differencing attack).
"""
from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

ORDER = {"pass": 0, "review": 1, "fail": 2}
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".md")
FIGURE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
                ".pdf": (b"%PDF-",)}
BAD_MAGIC = {b"\x7fELF": "an executable (ELF)", b"MZ": "a Windows executable", b"#!": "a script",
             b"PK\x03\x04": "a zip archive", b"\x1f\x8b": "a gzip file (e.g. R data)",
             b"\x28\xb5\x2f\xfd": "a zstd archive", b"\xfd7zXZ": "an xz archive", b"BZh": "a bzip2 file",
             b"7z\xbc\xaf": "a 7z archive", b"RDX": "an R data file", b"RDA": "an R data file",
             b"PAR1": "a parquet file", b"SQLite format 3": "a SQLite database", b"\xcf\xfa\xed\xfe":
             "an executable (Mach-O)"}
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
INTEGER = re.compile(r"^\+?\d+(\.0*)?$")
SUPPRESSED = re.compile(r"^(<\s*\d+|\*+|-|c|x|suppressed|NA|)$", re.I)
NON_ADDITIVE = (r"(^|_)(pct|percent|prop|proportion|rate|ratio|mean|avg|average|median|sd|std|var|variance"
                r"|min|max)(_|$)",)
MARGIN = re.compile(r"^(total|all|sum|overall|grand[ _]?total)$", re.I)
VALUE_IDS = {"email address": re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"),
             "UUID": re.compile(r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.I),
             "IP address": re.compile(r"^\d{1,3}(\.\d{1,3}){3}$"),
             "id code": re.compile(r"^[A-Za-z]{1,3}[-_]?\d{5,}$")}


@dataclass
class OutputRules:
    """Named disclosure thresholds (ACRO-like). Defaults are the enclave's policy."""

    allowed_suffixes: tuple[str, ...] = (".csv", ".tsv", ".txt", ".md", ".png", ".jpg", ".jpeg", ".pdf")
    max_file_bytes: int = 5 * 2**20
    max_csv_rows: int = 10_000  # more rows than this is row-level data, not a table of results
    min_cell_count: int = 10  # ACRO safe_threshold: counts 1..9 disclose small groups
    flag_zeros: bool = True  # ACRO zeros check: a zero count goes to review
    dominance_n: int = 2  # ACRO safe_nk_n: the n largest contributors …
    dominance_k: float = 0.9  # ACRO safe_nk_k: … may not hold more than this share of a total
    id_ratio: float = 0.5  # a column whose non-empty values look like ids this often is an id column
    id_column_patterns: tuple[str, ...] = (
        r"^(student|user|person|participant|learner|researcher|respondent|research)_?id$", r"^id$",
        r"^uuid$", r"e_?mail", r"^(first|last|full|given|family|sur|user)?_?name$", r"^ip(_?addr(ess)?)?$",
        r"phone", r"(street|postal|home|mail)_?address", r"^(dob|birth_?date|date_of_birth)$", r"^ssn$")
    count_patterns: tuple[str, ...] = (
        r"^(n|count|counts|freq|frequency|num|number|total|obs|observations|students|people)$",
        r"^n_", r"_n$", r"^count_", r"_count$", r"^num_", r"^number_of", r"_freq$")
    magnitude_patterns: tuple[str, ...] = (
        r"(^|_)(mean|avg|average|median|sd|std|var|variance|min|max|sum|score|amount|value|pct|percent"
        r"|prop|proportion|rate|ratio|minutes|hours|seconds|time|cost)s?(_|$)",)


@dataclass
class FileVerdict:
    path: str  # relative to the output folder, posix
    sha256: str
    bytes: int
    verdict: str  # "pass" | "review" | "fail"
    reasons: list[str] = field(default_factory=list)
    context: str = ""  # the researcher's explanation, shown to the reviewer


@dataclass
class OutputReport:
    verdict: str
    files: list[FileVerdict] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # about the output as a whole

    @property
    def manifest(self) -> dict[str, str]:
        """{path: sha256} for every file: goes with the release."""
        return {f.path: f.sha256 for f in self.files}

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "files": [asdict(f) for f in self.files],
                "reasons": list(self.reasons), "manifest": self.manifest}


class _Verdict:
    """Worst level so far and its reasons; a big table lists its first MAX_REASONS problems, then a count."""

    MAX_REASONS = 20

    def __init__(self):
        self.level, self.reasons, self.more = "pass", [], 0

    def add(self, level: str, reason: str) -> None:
        if ORDER[level] > ORDER[self.level]:
            self.level = level
        if reason in self.reasons:
            return
        if len(self.reasons) < self.MAX_REASONS:
            self.reasons.append(reason)
        else:
            self.more += 1

    def listed(self) -> list[str]:
        return self.reasons + ([f"… and {self.more} more"] if self.more else [])


def _sniff_type(suffix: str, head: bytes, v: _Verdict) -> bool:
    """True when the content agrees with the suffix; records why not."""
    for magic, what in BAD_MAGIC.items():
        # short magics ("MZ", "#!", "BZh", "RDX") can begin real text: for text files the binary and
        # control-character checks below catch those formats instead
        if head.startswith(magic) and (len(magic) >= 4 or suffix not in TEXT_SUFFIXES):
            v.add("fail", f"content is {what}, not a {suffix} file")
            return False
    if suffix in FIGURE_MAGIC:
        if not head.startswith(FIGURE_MAGIC[suffix]):
            v.add("fail", f"content is not a {suffix[1:].upper()} file")
            return False
        return True
    if b"\0" in head:
        v.add("fail", f"content is binary, not {suffix} text")
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multibyte character cut at the end of the sample is fine
            v.add("fail", f"content is not UTF-8 text (byte {e.start})")
            return False
    ctrl = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    if head and ctrl / len(head) > 0.01:
        v.add("fail", "content has control characters: not text")
        return False
    return True


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    key = re.sub(r"[\s.\-]+", "_", name.strip().lower())
    return any(re.search(p, key) for p in patterns)


def _as_count(cell: str) -> float | None:
    cell = cell.strip()
    return float(cell) if INTEGER.match(cell) else None


def _check_table(rows: list[list[str]], rules: OutputRules, v: _Verdict) -> None:
    """Identifier, small-count, zero and dominance checks on a parsed table (header first)."""
    header = [h.strip() for h in rows[0]]
    body = [r + [""] * (len(header) - len(r)) for r in rows[1:]]
    cols = {i: [r[i].strip() for r in body] for i in range(len(header))}
    for i, name in enumerate(header):
        if name and _matches(name, rules.id_column_patterns):
            v.add("fail", f"column {name!r} looks like an identifier")
        values = [x for x in cols[i] if x and not SUPPRESSED.match(x)]
        for what, rx in VALUE_IDS.items():
            if values and sum(1 for x in values if rx.match(x)) / len(values) >= rules.id_ratio:
                v.add("fail", f"column {name or i + 1!r} holds values that look like {what}s")
    numeric = {i for i, vals in cols.items()
               if any(NUMBER.match(x) for x in vals) and all(NUMBER.match(x) or SUPPRESSED.match(x) for x in vals)}
    categorical = [i for i in cols if i not in numeric]
    counts = []
    for i in numeric:
        ints = all(INTEGER.match(x) or SUPPRESSED.match(x) for x in cols[i])
        named_count = _matches(header[i], rules.count_patterns)
        named_mag = _matches(header[i], rules.magnitude_patterns) and not named_count
        unnamed = categorical and not named_mag and not _looks_like_label(header[i], cols[i])
        if ints and (named_count or unnamed):
            counts.append(i)
    margins = {r for r, row in enumerate(body) if any(MARGIN.match(row[i].strip()) for i in categorical)}
    for i in counts:
        for r, cell in enumerate(cols[i]):
            n = _as_count(cell)
            where = f"column {header[i] or i + 1!r}, row {r + 2}" + (" (a margin)" if r in margins else "")
            if n is not None and 0 < n < rules.min_cell_count:
                v.add("fail", f"count {cell} below {rules.min_cell_count} at {where}")
            elif n == 0 and rules.flag_zeros:
                v.add("review", f"zero count at {where}")
    stats = [i for i in numeric if i not in counts and _matches(header[i], rules.magnitude_patterns)]
    for i in [i for i in stats if not _matches(header[i], NON_ADDITIVE)]:  # averages and shares have no total
        data = [float(cols[i][r]) for r in range(len(body)) if r not in margins and NUMBER.match(cols[i][r])]
        total = sum(data)
        if len(data) > rules.dominance_n and min(data) >= 0 and total > 0:
            top = sum(sorted(data, reverse=True)[:rules.dominance_n])
            if top / total > rules.dominance_k:
                v.add("review", f"dominance in column {header[i]!r}: the {rules.dominance_n} largest cells hold "
                      f"{top / total:.0%} of the total (threshold {rules.dominance_k:.0%})")
    if stats and not counts and categorical:
        v.add("review", "statistics by group without a count column: group sizes cannot be checked")


def _looks_like_label(name: str, values: list[str]) -> bool:
    """Integer columns that are categories, not counts: years, ages, grades, codes, ranks, and R's
    row names (``write.csv`` writes them as an unnamed 1..N column)."""
    if not name and values == [str(n) for n in range(1, len(values) + 1)]:
        return True
    if re.search(r"year|age|grade|week|month|day|rank|level|code|order|wave|cohort|round|id$", name.lower()):
        return True
    ints = [int(float(x)) for x in values if INTEGER.match(x)]
    return bool(ints) and all(1900 <= x <= 2100 for x in ints)


def _check_file(root: Path, rel: str, rules: OutputRules, released: frozenset, context: str) -> FileVerdict:
    path = root / rel
    v = _Verdict()
    h, size, head = hashlib.sha256(), 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            head = head or chunk[:65536]
            h.update(chunk)
            size += len(chunk)
    digest = h.hexdigest()
    fv = lambda: FileVerdict(rel, digest, size, v.level, v.listed(), context)  # noqa: E731
    suffix = Path(rel).suffix.lower()
    if digest in released:
        v.add("review", "identical to an already released file")
    if suffix not in rules.allowed_suffixes:
        v.add("fail", f"file type {suffix or '(none)'} is not allowed; allowed: {', '.join(rules.allowed_suffixes)}")
        return fv()
    if size > rules.max_file_bytes:
        v.add("fail", f"{size} bytes is more than the limit of {rules.max_file_bytes}")
        return fv()
    if size == 0:
        v.add("review", "the file is empty")
        return fv()
    if not _sniff_type(suffix, head, v):
        return fv()
    if suffix in FIGURE_MAGIC:
        v.add("review", "a figure: small counts and outliers in it can only be checked by eye")
        return fv()
    text = path.read_bytes().decode("utf-8", errors="replace")
    if "\0" in text:
        v.add("fail", f"content is binary, not {suffix} text")
    elif suffix in (".csv", ".tsv"):
        _check_csv(text, suffix, rules, v)
    else:
        _check_free_text(text, v)
    return fv()


def _check_csv(text: str, suffix: str, rules: OutputRules, v: _Verdict) -> None:
    delimiter = "\t" if suffix == ".tsv" else ","
    if suffix == ".csv":
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            pass
    rows = []
    try:
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            if any(cell.strip() for cell in row):
                rows.append(row)
            if len(rows) > rules.max_csv_rows + 1:
                v.add("fail", f"more than {rules.max_csv_rows} rows: looks like row-level data")
                return
    except csv.Error as e:
        v.add("fail", f"not a readable table: {e}")
        return
    if len(rows) < 2:
        v.add("review", "a table without data rows")
        return
    _check_table(rows, rules, v)


def _check_free_text(text: str, v: _Verdict) -> None:
    for what, rx in VALUE_IDS.items():
        if what != "id code" and any(rx.match(tok.strip(".,;:()<>\"'")) for tok in text.split()):
            v.add("fail", f"contains what looks like an {what}")
    v.add("review", "free text: counts in it cannot be checked automatically")


def _walk(root: Path) -> tuple[list[str], list[FileVerdict]]:
    """Regular files to check, and verdicts for what can never be released (links, special files)."""
    files, refused = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                refused.append(FileVerdict(rel, "", 0, "fail", ["a symbolic link cannot be released"]))
                if name in dirnames:
                    dirnames.remove(name)
            elif name in filenames:
                if p.is_file():
                    files.append(rel)
                else:
                    refused.append(FileVerdict(rel, "", 0, "fail", ["not a regular file"]))
    return sorted(files), refused


def check_outputs_sync(output_dir, rules: OutputRules = OutputRules(), released_sha256=frozenset(),
                       context: dict[str, str] | None = None) -> OutputReport:
    """Blocking body of :func:`check_outputs`."""
    root, context = Path(output_dir), context or {}
    if not root.is_dir():
        return OutputReport("fail", [], ["the run produced no output folder"])
    files, refused = _walk(root)
    verdicts = refused + [_check_file(root, rel, rules, frozenset(released_sha256), context.get(rel, ""))
                          for rel in files]
    for f in refused:
        f.context = context.get(f.path, "")
    verdicts.sort(key=lambda f: f.path)
    if not verdicts:
        return OutputReport("fail", [], ["the output folder is empty: the run wrote no results to output/"])
    worst = max((f.verdict for f in verdicts), key=ORDER.__getitem__)
    return OutputReport(worst, verdicts, [])


async def check_outputs(output_dir, rules: OutputRules = OutputRules(), released_sha256=frozenset(),
                        context: dict[str, str] | None = None) -> OutputReport:
    """Check every file under ``output_dir`` (in a worker thread); ``context`` maps a relative path to
    the researcher's explanation, carried into its verdict for the reviewer."""
    return await asyncio.to_thread(check_outputs_sync, output_dir, rules, released_sha256, context)
