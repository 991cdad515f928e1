"""The enclave's shape, held by tests: one owner writes run states, the web layer and the pipeline
do not import each other in circles, the schema migrates from the one before, and the risk
appetite is configuration (a tightened threshold changes a verdict with no code change)."""

import ast
import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from traitlets.config import Config

import enclave_service
from enclave_service.app import EnclaveService
from enclave_service.db import Database, RunRecord, upgrade
from enclave_service.hub_integration import configure_enclave_service
from enclave_service.output_checks import check_outputs
from enclave_service.risk_appetite import RiskAppetiteError
from enclave_service.states import State

PACKAGE = Path(enclave_service.__file__).parent
OWNER = "runs.py"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _state_writes(tree: ast.AST) -> list[int]:
    """Lines that assign a run's state: x.state = …, setattr(x, "state", …), Run(state=…),
    update(..., state=…), and SQL that sets state."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name == "setattr" and len(node.args) > 1 and getattr(node.args[1], "value", None) == "state":
                lines.append(node.lineno)
            if name in ("Run", "update", "values") and any(k.arg == "state" for k in node.keywords):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "update runs set state" in " ".join(node.value.lower().split())
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_module_but_the_owner_writes_a_run_state():
    writers = {p.relative_to(PACKAGE).as_posix(): _state_writes(ast.parse(p.read_text())) for p in _modules()}
    assert writers[OWNER], "the detector finds the owner's own writes (so it can find others')"
    others = {m: lines for m, lines in writers.items() if lines and m != OWNER}
    assert others == {}, f"only {OWNER} may change a run's state: {others}"


def test_the_detector_sees_each_way_of_writing_a_state():
    code = (
        'run.state = "x"\nsetattr(run, "state", "x")\nRun(id=1, state="x")\n'
        'await p.update(rid, state="x")\nq = "UPDATE runs SET state = 1"\n'
    )
    assert _state_writes(ast.parse(code)) == [1, 2, 3, 4, 5]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add((node.module or "").split(".")[0])
    return out


def test_no_import_cycles_between_the_layers():
    deps = {p.stem: _imports(p) for p in PACKAGE.glob("*.py")}
    assert "api" not in deps["pages"], "pages render through web.py, not through the API handlers"
    assert "pipeline" not in deps["release"] and "pipeline" not in deps["runs"]
    assert not ({"api", "pages", "web"} & (deps["runs"] | deps["pipeline"] | deps["states"]))

    def reach(start, seen=None):
        seen = seen or set()
        for d in deps.get(start, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    cycles = [m for m in deps if m in reach(m)]
    assert cycles == [], f"modules that import themselves through others: {cycles}"


def test_a_database_of_the_previous_schema_is_upgraded_with_its_runs(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(create_engine(url), "0001")  # the schema as create_all made it before migrations
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        conn.execute("DROP TABLE alembic_version")  # as a database from before Alembic has none
        conn.execute(
            "INSERT INTO runs VALUES ('r1','101','T','ada','a@x','[\"grace\"]','m','in_review','',"
            "1.0,2.0,'abc',10,'','{\"verdict\": \"pass\", \"manifest\": {\"s.csv\": \"00\"}}','img',0,'',"
            "2,'','','','','',0)"
        )
        conn.execute("INSERT INTO releases VALUES ('r1','/x','00',5,'{\"s.csv\": \"00\"}',3.0)")
    db = Database(url)
    try:
        run = db.run_sync(lambda s: RunRecord.of(s.get(__import__("enclave_service.db").db.Run, "r1")))
        assert run.state is State.IN_REVIEW and run.collaborators == ["grace"]
        assert run.code_report is None and run.output_report["manifest"] == {"s.csv": "00"}
        assert run.input_records is None and run.on_analysis("grace")
        manifest = db.run_sync(lambda s: s.get(__import__("enclave_service.db").db.Release, "r1").manifest)
        assert manifest == {"s.csv": "00"}
    finally:
        db.close()
    with sqlite3.connect(tmp_path / "old.sqlite") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]


TABLE = "course,students\nbiology,12\nphysics,40\nstatistics,35\n"


async def test_a_tightened_threshold_changes_a_verdict_without_a_code_change(tmp_path):
    """The hub's configuration is the only thing that changes: the service reads it from the
    config file the hub writes, and the same table is judged differently."""
    out = tmp_path / "output"
    out.mkdir()
    (out / "counts.csv").write_text(TABLE)

    def service(state_dir, **kw):
        c = Config()
        svc = configure_enclave_service(
            c, state_dir=state_dir, kinetic_url="", public_url="http://hub", reviewers=[], smtp_port=0, **kw
        )
        app = EnclaveService()
        app.initialize([svc["command"][-1]])
        return app

    default = service(tmp_path / "a")
    report = await check_outputs(out, default.appetite().outputs)
    assert report.verdict == "pass", report.to_dict()
    strict = service(tmp_path / "b", risk_appetite={"outputs": {"min_cell_count": 20}})
    report = await check_outputs(out, strict.appetite().outputs)
    assert report.verdict == "fail"
    assert report.files[0].findings[0].rule == "small-counts"
    assert "count 12 below 20" in report.files[0].findings[0].evidence
    # a code rule's level too: reading the environment becomes a refusal
    stricter = service(tmp_path / "c", risk_appetite={"code": {"severities": {"environment": "fail"}}})
    assert {r.name: r.severity for r in stricter.appetite().code.calls}["environment"] == "fail"
    assert {r.name: r.severity for r in default.appetite().code.calls}["environment"] == "review"


def test_a_risk_appetite_that_does_not_fit_stops_the_service_in_words(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"EnclaveService": {"risk_appetite": {"outputs": {"min_cel_count": 20}}}}))
    with pytest.raises(RiskAppetiteError, match="unknown risk appetite setting outputs.'min_cel_count'"):
        EnclaveService().initialize([f"--config={cfg}"])
