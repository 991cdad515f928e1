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
- unaggregated tables (rows that are records, not cells): a table with as many rows as the input data
  has records fails; many rows with a high-cardinality column, or an integer column whose values are
  nearly all distinct, go to review; numbers with neither a category nor a count column are review
  (the checks cannot tell aggregates from records).
- identifiers by the shape of their values as well as by column name (Kinetic's student ids with or
  without their letter prefix, synthetic ids, UUIDs, emails), in tables and in free text.
- hidden files (any path part starting with '.') and more files than the review page shows are never
  released: they fail.

Every check is registered by name (:data:`CHECKS`); every finding names its rule, its level and its
evidence (:class:`Finding`). A check that cannot decide (it raised) says ``review``, never ``pass``.
The thresholds come from the risk appetite (:mod:`enclave_service.risk_appetite`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ORDER = {"pass": 0, "review": 1, "fail": 2}
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".md")
FIGURE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".pdf": (b"%PDF-",),
}
BAD_MAGIC = {
    b"\x7fELF": "an executable (ELF)",
    b"MZ": "a Windows executable",
    b"#!": "a script",
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip file (e.g. R data)",
    b"\x28\xb5\x2f\xfd": "a zstd archive",
    b"\xfd7zXZ": "an xz archive",
    b"BZh": "a bzip2 file",
    b"7z\xbc\xaf": "a 7z archive",
    b"RDX": "an R data file",
    b"RDA": "an R data file",
    b"PAR1": "a parquet file",
    b"SQLite format 3": "a SQLite database",
    b"\xcf\xfa\xed\xfe": "an executable (Mach-O)",
}
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
INTEGER = re.compile(r"^\+?\d+(\.0*)?$")
SUPPRESSED = re.compile(r"^(<\s*\d+|\*+|-|c|x|suppressed|NA|)$", re.I)
NON_ADDITIVE = (
    r"(^|_)(pct|percent|prop|proportion|rate|ratio|mean|avg|average|median|sd|std|var|variance"
    r"|min|max)(_|$)",
)
MARGIN = re.compile(r"^(total|all|sum|overall|grand[ _]?total)$", re.I)
# Identifier shapes. Kinetic's real student ids are "S" + 8 digits; with the prefix dropped they are
# 8 digits; synthetic ones are "synthetic-NNNN"; people are UUIDs and e-mail addresses.
DEFAULT_ID_SHAPES = {
    "email address": r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$",
    "UUID": r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
    "IP address": r"^\d{1,3}(\.\d{1,3}){3}$",
    "Kinetic student id": r"^[A-Za-z]{1,3}[-_]?\d{7,9}$",
    "Kinetic student id without its prefix": r"^\d{8}$",
    "synthetic student id": r"^synthetic-\d{3,}$",
    "id code": r"^[A-Za-z]{1,3}[-_]?\d{5,}$",
}
# Shapes too generic for free text, where they would match ordinary words and numbers one by one.
TABLE_ONLY_SHAPES = ("id code",)
BARE_ID_SHAPES = ("Kinetic student id without its prefix",)


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
        r"^(student|user|person|participant|learner|researcher|respondent|research)_?id$",
        r"^id$",
        r"^uuid$",
        r"e_?mail",
        r"^(first|last|full|given|family|sur|user)?_?name$",
        r"^ip(_?addr(ess)?)?$",
        r"phone",
        r"(street|postal|home|mail)_?address",
        r"^(dob|birth_?date|date_of_birth)$",
        r"^ssn$",
    )
    count_patterns: tuple[str, ...] = (
        r"^(n|count|counts|freq|frequency|num|number|total|obs|observations|students|people)$",
        r"^n_",
        r"_n$",
        r"^count_",
        r"_count$",
        r"^num_",
        r"^number_of",
        r"_freq$",
    )
    magnitude_patterns: tuple[str, ...] = (
        r"(^|_)(mean|avg|average|median|sd|std|var|variance|min|max|sum|score|amount|value|pct|percent"
        r"|prop|proportion|rate|ratio|minutes|hours|seconds|time|cost)s?(_|$)",
    )
    id_shapes: dict = field(default_factory=lambda: dict(DEFAULT_ID_SHAPES))
    text_bare_ids_fail: int = 3  # this many 8-digit numbers in a text file fail it (fewer: review)
    max_files: int = 50  # the review page shows every file; more cannot be reviewed
    unaggregated_min_rows: int = 50  # a table this long with a high-cardinality column looks like records
    high_cardinality_ratio: float = 0.9  # distinct values / rows of such a column
    distinct_integers_min_rows: int = 20
    distinct_integers_ratio: float = 0.95  # an integer column this distinct is an id or a measurement
    record_rows_min: int = 10  # the input-record-count rule applies from this many rows
    severities: dict = field(default_factory=dict)  # rule -> level, overriding a rule's own level

    def shape(self, name: str) -> re.Pattern:
        cache = self.__dict__.setdefault("_compiled", {})
        if name not in cache:
            cache[name] = re.compile(self.id_shapes[name], re.I)
        return cache[name]


DEFAULT_RULES = OutputRules()  # the defaults, shared read-only by callers that pass none


@dataclass
class Finding:
    """One result of one check: the rule, its level, and the evidence a reviewer can verify."""

    rule: str
    level: str  # "pass" | "review" | "fail"
    evidence: str


@dataclass
class FileVerdict:
    path: str  # relative to the output folder, posix
    sha256: str
    bytes: int
    verdict: str  # "pass" | "review" | "fail"
    reasons: list[str] = field(default_factory=list)  # the evidence of each finding, in order
    findings: list[Finding] = field(default_factory=list)


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
        return {
            "verdict": self.verdict,
            "files": [asdict(f) for f in self.files],
            "reasons": list(self.reasons),
            "manifest": self.manifest,
        }


class _Verdict:
    """Worst level so far and its findings; a big table lists its first MAX_REASONS problems, then a count."""

    MAX_REASONS = 20

    def __init__(self, severities: dict | None = None):
        self.level, self.findings, self.more = "pass", [], 0
        self.severities = severities or {}

    def add(self, rule: str, level: str, evidence: str) -> None:
        level = self.severities.get(rule, level)
        if ORDER[level] > ORDER[self.level]:
            self.level = level
        if any(f.evidence == evidence for f in self.findings):
            return
        if len(self.findings) < self.MAX_REASONS:
            self.findings.append(Finding(rule, level, evidence))
        else:
            self.more += 1

    def listed(self) -> list[str]:
        return [f.evidence for f in self.findings] + ([f"… and {self.more} more"] if self.more else [])

    def all_findings(self) -> list[Finding]:
        more = [Finding("more", self.level, f"… and {self.more} more")] if self.more else []
        return self.findings + more


CHECKS: dict[str, Callable] = {}


def check(name: str):
    """Register a table or text check under its rule name."""

    def deco(fn):
        CHECKS[name] = fn
        return fn

    return deco


def _run_check(name: str, v: _Verdict, *args) -> None:
    try:
        CHECKS[name](*args, v)
    except Exception as e:  # noqa: BLE001 - a check that cannot decide says review
        v.add(
            name,
            "review",
            f"the {name} check could not decide ({type(e).__name__}: {e}); look at it yourself",
        )


def _mask(value: str) -> str:
    return value[:2] + "…" if len(value) > 3 else "…"


def _sniff_type(suffix: str, head: bytes, v: _Verdict) -> bool:
    """True when the content agrees with the suffix; records why not."""
    for magic, what in BAD_MAGIC.items():
        # short magics ("MZ", "#!", "BZh", "RDX") can begin real text: for text files the binary and
        # control-character checks below catch those formats instead
        if head.startswith(magic) and (len(magic) >= 4 or suffix not in TEXT_SUFFIXES):
            v.add("content-type", "fail", f"content is {what}, not a {suffix} file")
            return False
    if suffix in FIGURE_MAGIC:
        if not head.startswith(FIGURE_MAGIC[suffix]):
            v.add("content-type", "fail", f"content is not a {suffix[1:].upper()} file")
            return False
        return True
    if b"\0" in head:
        v.add("content-type", "fail", f"content is binary, not {suffix} text")
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # a multibyte character cut at the end of the sample is fine
            v.add("content-type", "fail", f"content is not UTF-8 text (byte {e.start})")
            return False
    ctrl = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    if head and ctrl / len(head) > 0.01:
        v.add("content-type", "fail", "content has control characters: not text")
        return False
    return True


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    key = re.sub(r"[\s.\-]+", "_", name.strip().lower())
    return any(re.search(p, key) for p in patterns)


def _as_count(cell: str) -> float | None:
    cell = cell.strip()
    return float(cell) if INTEGER.match(cell) else None


@dataclass
class Table:
    header: list[str]
    body: list[list[str]]
    cols: dict[int, list[str]]
    numeric: set
    categorical: list
    counts: list
    margins: set
    input_records: int | None

    def name(self, i: int) -> str:
        return self.header[i] or str(i + 1)


def _table(rows: list[list[str]], rules: OutputRules, input_records: int | None) -> Table:
    header = [h.strip() for h in rows[0]]
    body = [r + [""] * (len(header) - len(r)) for r in rows[1:]]
    cols = {i: [r[i].strip() for r in body] for i in range(len(header))}
    numeric = {
        i
        for i, vals in cols.items()
        if any(NUMBER.match(x) for x in vals) and all(NUMBER.match(x) or SUPPRESSED.match(x) for x in vals)
    }
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
    return Table(header, body, cols, numeric, categorical, counts, margins, input_records)


@check("identifier-column")
def _identifier_columns(t: Table, rules: OutputRules, v: _Verdict) -> None:
    for name in t.header:
        if name and _matches(name, rules.id_column_patterns):
            v.add("identifier-column", "fail", f"column {name!r} looks like an identifier (by its name)")


@check("identifier-values")
def _identifier_values(t: Table, rules: OutputRules, v: _Verdict) -> None:
    for i in range(len(t.header)):
        values = [x for x in t.cols[i] if x and not SUPPRESSED.match(x)]
        if not values:
            continue
        for what in rules.id_shapes:
            rx = rules.shape(what)
            hits = [x for x in values if rx.match(x)]
            if len(hits) / len(values) >= rules.id_ratio:
                v.add(
                    "identifier-values",
                    "fail",
                    f"column {t.name(i)!r}: {len(hits)} of {len(values)} values look like {what}s "
                    f"(e.g. {_mask(hits[0])})",
                )
                break


@check("small-counts")
def _small_counts(t: Table, rules: OutputRules, v: _Verdict) -> None:
    for i in t.counts:
        for r, cell in enumerate(t.cols[i]):
            n = _as_count(cell)
            where = f"column {t.name(i)!r}, row {r + 2}" + (" (a margin)" if r in t.margins else "")
            if n is not None and 0 < n < rules.min_cell_count:
                v.add("small-counts", "fail", f"count {cell} below {rules.min_cell_count} at {where}")
            elif n == 0 and rules.flag_zeros:
                v.add("zeros", "review", f"zero count at {where}")


@check("dominance")
def _dominance(t: Table, rules: OutputRules, v: _Verdict) -> None:
    stats = [i for i in t.numeric if i not in t.counts and _matches(t.header[i], rules.magnitude_patterns)]
    for i in [
        i for i in stats if not _matches(t.header[i], NON_ADDITIVE)
    ]:  # averages and shares have no total
        data = [
            float(t.cols[i][r])
            for r in range(len(t.body))
            if r not in t.margins and NUMBER.match(t.cols[i][r])
        ]
        total = sum(data)
        if len(data) > rules.dominance_n and min(data) >= 0 and total > 0:
            top = sum(sorted(data, reverse=True)[: rules.dominance_n])
            if top / total > rules.dominance_k:
                v.add(
                    "dominance",
                    "review",
                    f"dominance in column {t.header[i]!r}: the {rules.dominance_n} largest "
                    f"cells hold {top / total:.0%} of the total (threshold {rules.dominance_k:.0%})",
                )
    if stats and not t.counts and t.categorical:
        v.add(
            "group-sizes",
            "review",
            "statistics by group without a count column: group sizes cannot be checked",
        )


@check("unaggregated")
def _unaggregated(t: Table, rules: OutputRules, v: _Verdict) -> None:
    """Rows that are records, not cells."""
    rows = len(t.body)
    if t.input_records and rows >= rules.record_rows_min and rows == t.input_records:
        v.add(
            "record-rows",
            "fail",
            f"the table has {rows} rows, exactly as many as the input data has "
            "records: it looks like the data itself, not a summary of it",
        )
    rownames = {i for i in t.cols if _is_rownames(t.header[i], t.cols[i])}
    if rows >= rules.unaggregated_min_rows:
        for i, vals in t.cols.items():
            if i in rownames or i in t.counts:
                continue
            distinct = len(set(vals))
            if distinct / rows >= rules.high_cardinality_ratio:
                v.add(
                    "high-cardinality",
                    "review",
                    f"{rows} rows and column {t.name(i)!r} has {distinct} distinct "
                    f"values ({distinct / rows:.0%}): rows that look like records, not aggregates",
                )
                break
    if rows >= rules.distinct_integers_min_rows:
        for i in sorted(t.numeric - rownames):
            vals = [x for x in t.cols[i] if INTEGER.match(x)]
            if len(vals) < rows * 0.9:
                continue
            distinct = len(set(vals))
            if distinct / rows >= rules.distinct_integers_ratio:
                v.add(
                    "distinct-integers",
                    "review",
                    f"integer column {t.name(i)!r} has {distinct} distinct values "
                    f"in {rows} rows: an identifier or an individual measurement, not a count",
                )
    if not t.categorical and not t.counts and rows >= 2:
        v.add(
            "no-categories",
            "review",
            f"{rows} rows of numbers with neither a category nor a count column: "
            "the checks cannot tell aggregates from records",
        )


def _is_rownames(name: str, values: list[str]) -> bool:
    return not name and values == [str(n) for n in range(1, len(values) + 1)]


def _looks_like_label(name: str, values: list[str]) -> bool:
    """Integer columns that are categories, not counts: years, ages, grades, codes, ranks, and R's
    row names (``write.csv`` writes them as an unnamed 1..N column)."""
    if _is_rownames(name, values):
        return True
    if re.search(r"year|age|grade|week|month|day|rank|level|code|order|wave|cohort|round|id$", name.lower()):
        return True
    ints = [int(float(x)) for x in values if INTEGER.match(x)]
    return bool(ints) and all(1900 <= x <= 2100 for x in ints)


TABLE_CHECKS = ("identifier-column", "identifier-values", "small-counts", "dominance", "unaggregated")


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _check_file(
    root: Path, rel: str, rules: OutputRules, released: frozenset, input_records: int | None
) -> FileVerdict:
    path = root / rel
    v = _Verdict(rules.severities)
    h, size, head = hashlib.sha256(), 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            head = head or chunk[:65536]
            h.update(chunk)
            size += len(chunk)
    digest = h.hexdigest()
    fv = lambda: FileVerdict(rel, digest, size, v.level, v.listed(), v.all_findings())  # noqa: E731
    suffix = Path(rel).suffix.lower()
    if _hidden(rel):
        v.add("hidden-file", "fail", "a hidden file (its name or a folder's starts with '.'): never released")
        return fv()
    if digest in released:
        v.add("re-release", "review", "identical to an already released file")
    if suffix not in rules.allowed_suffixes:
        v.add(
            "file-type",
            "fail",
            f"file type {suffix or '(none)'} is not allowed; allowed: {', '.join(rules.allowed_suffixes)}",
        )
        return fv()
    if size > rules.max_file_bytes:
        v.add("file-size", "fail", f"{size} bytes is more than the limit of {rules.max_file_bytes}")
        return fv()
    if size == 0:
        v.add("empty", "review", "the file is empty")
        return fv()
    if not _sniff_type(suffix, head, v):
        return fv()
    if suffix in FIGURE_MAGIC:
        v.add("figure", "review", "a figure: small counts and outliers in it can only be checked by eye")
        return fv()
    text = path.read_bytes().decode("utf-8", errors="replace")
    if "\0" in text:
        v.add("content-type", "fail", f"content is binary, not {suffix} text")
    elif suffix in (".csv", ".tsv"):
        _check_csv(text, suffix, rules, v, input_records)
    else:
        _run_check("free-text", v, text, rules)
    return fv()


def _check_csv(text: str, suffix: str, rules: OutputRules, v: _Verdict, input_records: int | None) -> None:
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
                v.add("row-limit", "fail", f"more than {rules.max_csv_rows} rows: looks like row-level data")
                return
    except csv.Error as e:
        v.add("table-format", "fail", f"not a readable table: {e}")
        return
    if len(rows) < 2:
        v.add("table-format", "review", "a table without data rows")
        return
    try:
        table = _table(rows, rules, input_records)
    except Exception as e:  # noqa: BLE001 - cannot decide: review
        v.add(
            "table-format",
            "review",
            f"the table could not be analysed ({type(e).__name__}); look at it yourself",
        )
        return
    for name in TABLE_CHECKS:
        _run_check(name, v, table, rules)


@check("free-text")
def _check_free_text(text: str, rules: OutputRules, v: _Verdict) -> None:
    tokens = [tok.strip(".,;:()[]{}<>\"'") for tok in text.split()]
    for what in rules.id_shapes:
        if what in TABLE_ONLY_SHAPES:
            continue
        rx = rules.shape(what)
        hits = [tok for tok in tokens if tok and rx.match(tok)]
        if not hits:
            continue
        if what in BARE_ID_SHAPES and len(hits) < rules.text_bare_ids_fail:
            v.add(
                "identifier-values",
                "review",
                f"contains {len(hits)} number(s) shaped like {what}s (e.g. {_mask(hits[0])})",
            )
        else:
            v.add(
                "identifier-values",
                "fail",
                f"contains {len(hits)} value(s) that look like an {what} (e.g. {_mask(hits[0])})",
            )
    v.add("free-text", "review", "free text: counts in it cannot be checked automatically")


def _walk(root: Path) -> tuple[list[str], list[FileVerdict]]:
    """Regular files to check, and verdicts for what can never be released (links, special files)."""
    files, refused = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                refused.append(
                    FileVerdict(
                        rel,
                        "",
                        0,
                        "fail",
                        ["a symbolic link cannot be released"],
                        [Finding("link", "fail", "a symbolic link cannot be released")],
                    )
                )
                if name in dirnames:
                    dirnames.remove(name)
            elif name in filenames:
                if p.is_file():
                    files.append(rel)
                else:
                    refused.append(
                        FileVerdict(
                            rel,
                            "",
                            0,
                            "fail",
                            ["not a regular file"],
                            [Finding("special-file", "fail", "not a regular file")],
                        )
                    )
    return sorted(files), refused


def check_outputs_sync(
    output_dir,
    rules: OutputRules = DEFAULT_RULES,
    released_sha256=frozenset(),
    input_records: int | None = None,
) -> OutputReport:
    """Blocking body of :func:`check_outputs`."""
    root = Path(output_dir)
    if not root.is_dir():
        return OutputReport("fail", [], ["the run produced no output folder"])
    files, refused = _walk(root)
    verdicts = refused + [
        _check_file(root, rel, rules, frozenset(released_sha256), input_records) for rel in files
    ]
    verdicts.sort(key=lambda f: f.path)
    if not verdicts:
        return OutputReport("fail", [], ["the output folder is empty: the run wrote no results to output/"])
    reasons = []
    worst = max((f.verdict for f in verdicts), key=ORDER.__getitem__)
    if len(verdicts) > rules.max_files:
        worst = "fail"
        reasons.append(
            f"{len(verdicts)} files: more than the {rules.max_files} a reviewer is shown; "
            "combine the results into fewer files"
        )
    return OutputReport(worst, verdicts, reasons)


async def check_outputs(
    output_dir,
    rules: OutputRules = DEFAULT_RULES,
    released_sha256=frozenset(),
    input_records: int | None = None,
) -> OutputReport:
    """Check every file under ``output_dir`` (in a worker thread). ``input_records``: how many
    records the run's input data held (a table with that many rows is the data itself)."""
    return await asyncio.to_thread(check_outputs_sync, output_dir, rules, released_sha256, input_records)
