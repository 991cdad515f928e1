"""Output checks: what a reviewer is warned about, and what can never be released."""

import hashlib

import pytest

from enclave_service.output_checks import OutputRules, check_outputs

CLEAN = 'group,n,total_minutes\n"a",120,5400.5\n"b",95,4100\n"c",40,3900\n"Total",255,13400.5\n'


def write(root, files):
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


async def verdict_of(tmp_path, name, data, **kw):
    report = await check_outputs(write(tmp_path / "output", {name: data}), **kw)
    [f] = report.files
    return f


async def test_clean_aggregate_table_passes_with_manifest(tmp_path):
    out = write(
        tmp_path / "output",
        {"counts.csv": CLEAN, "sub/rowname.csv": '"","course","n"\n"1","bio",40\n"2","chem",12\n'},
    )
    report = await check_outputs(out)
    assert report.verdict == "pass", report.to_dict()
    assert report.manifest == {
        "counts.csv": hashlib.sha256(CLEAN.encode()).hexdigest(),
        "sub/rowname.csv": hashlib.sha256((out / "sub/rowname.csv").read_bytes()).hexdigest(),
    }
    counts = report.files[0]
    assert (counts.path, counts.bytes, counts.findings) == ("counts.csv", len(CLEAN), [])
    assert report.to_dict()["manifest"] == report.manifest


@pytest.mark.parametrize(
    "table, reason",
    [
        ("group,n\na,120\nb,7\n", "count 7 below 10 at column 'n', row 3"),
        # wide cross-tab: integer cells beside a categorical column are counts, whatever their names
        ("course,passed,failed\nbio,40,3\nchem,22,31\n", "count 3 below 10 at column 'failed'"),
        # cells suppressed by hand, but the margin gives the small group away
        (
            "course,passed,failed,Total\nbio,40,<10,44\nchem,22,31,53\nTotal,62,35,97\nsmall,*,*,6\n",
            "count 6 below 10 at column 'Total', row 5",
        ),
        ("course,passed\nbio,40\nchem,22\nTotal,4\n", "(a margin)"),
    ],
)
async def test_small_counts_fail(tmp_path, table, reason):
    f = await verdict_of(tmp_path, "t.csv", table)
    assert f.verdict == "fail" and any(reason in r for r in f.reasons), f.reasons


async def test_many_problems_are_listed_then_counted(tmp_path):
    rows = "group,n\n" + "".join(f"g{i},3\n" for i in range(30))
    f = await verdict_of(tmp_path, "t.csv", rows)
    assert f.verdict == "fail" and len(f.reasons) == 21 and f.reasons[-1] == "… and 10 more"


async def test_zero_count_goes_to_review(tmp_path):
    f = await verdict_of(tmp_path, "t.csv", "group,count\na,120\nb,0\n")
    assert (f.verdict, f.reasons) == ("review", ["zero count at column 'count', row 3"])
    f = await verdict_of(
        tmp_path / "2", "t.csv", "group,count\na,120\nb,0\n", rules=OutputRules(flag_zeros=False)
    )
    assert f.verdict == "pass"


@pytest.mark.parametrize(
    "table, reason",
    [
        ("student_id,score\n1,3.5\n2,4.0\n", "column 'student_id' looks like an identifier"),
        ("who,score\nann@example.org,3.5\nbob@example.org,4.0\n", "email address"),
        (
            "x,score\n123e4567-e89b-12d3-a456-426614174000,3.5\n223e4567-e89b-12d3-a456-426614174000,4.0\n",
            "UUID",
        ),
        ("Email Address,n\nsomething,40\n", "identifier"),
    ],
)
async def test_identifier_columns_fail(tmp_path, table, reason):
    f = await verdict_of(tmp_path, "t.csv", table)
    assert f.verdict == "fail" and any(reason in r for r in f.reasons), f.reasons


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("t.csv", b"PK\x03\x04" + b"\0" * 40, "a zip archive"),
        ("t.csv", b"group,n\na,12\n\0\0\0\x01\x02", "binary"),
        ("t.csv", b"\x7fELF\x02\x01\x01" + b"\0" * 40, "ELF"),
        ("plot.png", b"%PDF-1.4 not a png", "not a PNG"),
        ("model.rds", b"\x1f\x8b\x08\0", "not allowed"),
        ("page.html", "<script>alert(1)</script>", "not allowed"),
    ],
)
async def test_wrong_or_disguised_types_fail(tmp_path, name, data, reason):
    f = await verdict_of(tmp_path, name, data)
    assert f.verdict == "fail" and any(reason in r for r in f.reasons), f.reasons


async def test_size_and_row_limits_fail(tmp_path):
    f = await verdict_of(tmp_path, "big.txt", "x" * 2000, rules=OutputRules(max_file_bytes=1000))
    assert f.verdict == "fail" and "more than the limit of 1000" in f.reasons[0]
    rows = "group,n\n" + "".join(f"g{i},{100 + i}\n" for i in range(50))
    f = await verdict_of(tmp_path / "2", "long.csv", rows, rules=OutputRules(max_csv_rows=20))
    assert f.verdict == "fail" and "more than 20 rows" in f.reasons[0]


async def test_identical_to_released_is_flagged(tmp_path):
    digest = hashlib.sha256(CLEAN.encode()).hexdigest()
    f = await verdict_of(tmp_path, "counts.csv", CLEAN, released_sha256=frozenset({digest}))
    assert (f.verdict, f.reasons) == ("review", ["identical to an already released file"])


async def test_figures_text_and_dominance_go_to_review(tmp_path):
    out = write(
        tmp_path / "output",
        {
            "plot.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 32,
            "notes.md": "# Results\nThe effect was small.\n",
            "money.csv": "school,n,total_amount\na,40,98000\nb,30,1000\nc,25,900\nd,22,100\n",
            "means.csv": "school,mean_score\na,3.1\nb,2.9\n",
        },
    )
    report = await check_outputs(out)
    by = {f.path: f for f in report.files}
    assert report.verdict == "review" and all(f.verdict == "review" for f in report.files), report.to_dict()
    assert "figure" in by["plot.png"].reasons[0] and "free text" in by["notes.md"].reasons[0]
    assert "dominance in column 'total_amount'" in by["money.csv"].reasons[0]
    assert "without a count column" in by["means.csv"].reasons[0]


async def test_email_in_free_text_fails(tmp_path):
    f = await verdict_of(tmp_path, "log.txt", "outlier was ann@example.org (score 99)\n")
    assert f.verdict == "fail" and "email address" in f.reasons[0]


async def test_no_outputs_fail_clearly(tmp_path):
    empty = await check_outputs(write(tmp_path / "output", {}))
    assert (empty.verdict, empty.files, empty.manifest) == ("fail", [], {})
    assert "empty" in empty.reasons[0]
    missing = await check_outputs(tmp_path / "nope")
    assert missing.verdict == "fail" and "no output folder" in missing.reasons[0]


async def test_links_are_refused(tmp_path):
    out = write(tmp_path / "output", {"ok.csv": CLEAN})
    (out / "passwd.csv").symlink_to("/etc/passwd")
    report = await check_outputs(out)
    assert report.verdict == "fail"
    assert [(f.path, f.verdict) for f in report.files] == [("ok.csv", "pass"), ("passwd.csv", "fail")]


async def test_records_are_not_results(tmp_path):
    # as many rows as the input data has records: the data itself
    rows = "week,minutes,score\n" + "".join(f"{i % 12},{i % 90},{i % 100}\n" for i in range(120))
    f = await verdict_of(tmp_path, "t.csv", rows, input_records=120)
    assert f.verdict == "fail" and f.findings[0].rule == "record-rows", f.findings
    # the same table without knowing the input: numbers without categories cannot be judged → review
    f = await verdict_of(tmp_path / "2", "t.csv", rows)
    assert f.verdict == "review" and "no-categories" in [x.rule for x in f.findings]
    # integer column nearly all distinct (an id or an individual measurement)
    rows = "course,n,code\n" + "".join(f"c{i % 3},{20 + i % 3},{1000 + i}\n" for i in range(30))
    f = await verdict_of(tmp_path / "3", "t.csv", rows)
    assert "distinct-integers" in [x.rule for x in f.findings] and f.verdict != "pass"
    # many rows with a high-cardinality column
    rows = "group,n,mean_score\n" + "".join(f"g{i},{20 + i},{i * 1.37:.2f}\n" for i in range(60))
    f = await verdict_of(tmp_path / "4", "t.csv", rows)
    assert "high-cardinality" in [x.rule for x in f.findings] and f.verdict != "pass"


@pytest.mark.parametrize(
    "table, shape",
    [
        ("k,quiz\n" + "".join(f"{12345678 + i * 7919},{50 + i}\n" for i in range(12)), "without its prefix"),
        ("k,quiz\n" + "".join(f"S{12345678 + i * 7919},{50 + i}\n" for i in range(12)), "Kinetic student id"),
        ("k,quiz\n" + "".join(f"synthetic-{i:04d},{50 + i}\n" for i in range(12)), "synthetic student id"),
    ],
)
async def test_ids_are_recognised_by_their_shape_whatever_the_column_name(tmp_path, table, shape):
    f = await verdict_of(tmp_path, "t.csv", table)
    assert f.verdict == "fail" and any(
        x.rule == "identifier-values" and shape in x.evidence for x in f.findings
    )
    assert "12345678" not in str(f.findings)  # the evidence does not repeat the id


async def test_ids_in_text_files(tmp_path):
    f = await verdict_of(tmp_path, "notes.txt", "top student S12345678 scored 99\n")
    assert f.verdict == "fail" and f.findings[0].rule == "identifier-values"
    one = await verdict_of(tmp_path / "1", "notes.txt", "the sample was drawn on 20260115\n")
    assert one.verdict == "review" and one.findings[0].rule == "identifier-values"
    many = await verdict_of(tmp_path / "2", "notes.md", "ids 12345678, 23456789 and 34567890\n")
    assert many.verdict == "fail"


async def test_hidden_files_and_more_files_than_a_reviewer_sees_fail(tmp_path):
    out = write(tmp_path / "output", {"ok.csv": CLEAN, ".secret.csv": CLEAN, ".hid/x.csv": CLEAN})
    report = await check_outputs(out)
    by = {f.path: f for f in report.files}
    assert report.verdict == "fail"
    assert by[".secret.csv"].findings[0].rule == "hidden-file" and by[".hid/x.csv"].verdict == "fail"
    out = write(tmp_path / "many", {f"t{i}.csv": CLEAN for i in range(4)})
    report = await check_outputs(out, OutputRules(max_files=3))
    assert report.verdict == "fail" and "more than the 3 a reviewer is shown" in report.reasons[0]


async def test_a_check_that_cannot_decide_says_review(tmp_path, monkeypatch):
    from enclave_service import output_checks

    def broken(table, rules, v):
        raise ValueError("surprise")

    monkeypatch.setitem(output_checks.CHECKS, "dominance", broken)
    f = await verdict_of(tmp_path, "t.csv", CLEAN)
    assert f.verdict == "review" and f.findings[0].rule == "dominance"
    assert "could not decide" in f.findings[0].evidence
