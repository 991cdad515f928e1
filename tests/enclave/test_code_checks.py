"""Code checks read R with R's parser: what is flagged is what the code does, not how it looks."""

import pytest

from enclave_service.code_checks import CodeRules, check_code

BLANK_MAIN = """\
# Kinetic blank project: read the synthetic (or, in the enclave, real) data and write results.
cutoff_date = "2024-01-01"
files <- list.files("data", pattern = "\\\\.csv$", full.names = TRUE)
responses <- do.call(rbind, lapply(files, read.csv))
counts <- aggregate(count ~ group, data = transform(responses, count = 1), FUN = sum)
dir.create("output", showWarnings = FALSE)
write.csv(counts, file.path("output", "counts.csv"), row.names = FALSE)
"""

# One project exercising every rule; each key is the line content of interest.
BAD = {
    "dl.R": 'x <- 1\ndownload.file(u, "d.csv")\n',
    "sys.R": 'base::system(\n  "ls -l"\n)\n',  # a call hidden across lines
    "inst.R": 'install.packages("dplyr")\nremotes::install_github("a/b")\n',
    "curl.R": "res <- curl::curl_fetch_memory(target)\n",
    "url.R": 'd <- read.csv("https://example.org/data.csv")\n',
    "native.R": 'Rcpp::sourceCpp("f.cpp")\ndyn.load("x.so")\n',
    "lib.R": "library(httr)\nGET(target)\n",
    "paths.R": 'a <- readLines("/etc/passwd")\nb <- read.csv("../other/x.csv")\nsetwd("~")\n',
    "misc.R": 'k <- Sys.getenv("HOME")\neval(parse(text = code))\nf <- do.call("system", list("id"))\n',
}


async def check(tmp_path, files, rules=None):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return await check_code(tmp_path, rules)


async def test_blank_project_passes(tmp_path):
    files = {
        "kinetic/main.r": BLANK_MAIN,
        "kinetic/data/responses.csv": "group,x\na,1\n",
        "kinetic/renv.lock": '{"R": {"Version": "4.2.2"}, "Hash": "0123456789abcdef0123456789abcdef"}\n',
        ".Renviron": "ANALYSIS_API_KEY=a7f3kq9zB2xY8wLm4nP0\n",
    }
    report = await check(tmp_path, files)
    assert report.to_dict() == {"verdict": "pass", "findings": []}


async def test_each_rule_fires_with_file_line_and_snippet(tmp_path):
    report = await check(tmp_path, BAD)
    got = {(f.file, f.line, f.rule, f.severity) for f in report.findings}
    expected = {
        ("dl.R", 2, "network", "fail"),
        ("sys.R", 1, "shell", "fail"),
        ("inst.R", 1, "package-install", "fail"),
        ("inst.R", 2, "package-install", "fail"),
        ("curl.R", 1, "network", "fail"),
        ("url.R", 1, "network", "fail"),
        ("native.R", 1, "native-code", "fail"),
        ("native.R", 2, "native-code", "fail"),
        ("lib.R", 1, "network", "fail"),
        ("paths.R", 1, "outside-project", "fail"),
        ("paths.R", 2, "outside-project", "review"),
        ("paths.R", 3, "working-directory", "review"),
        ("paths.R", 3, "outside-project", "review"),
        ("misc.R", 1, "environment", "review"),
        ("misc.R", 2, "dynamic-code", "review"),
        ("misc.R", 3, "shell", "fail"),
    }
    assert expected <= got, expected - got
    assert report.verdict == "fail"
    sys_finding = next(f for f in report.findings if f.file == "sys.R")
    assert sys_finding.snippet == "base::system(" and "base::system()" in sys_finding.message
    assert report.to_dict()["findings"][0].keys() == {
        "file",
        "line",
        "rule",
        "severity",
        "message",
        "snippet",
    }


async def test_the_parser_not_grep_decides(tmp_path):
    """Comments, look-alike names and non-URL strings mentioning banned calls are not findings."""
    files = {
        "main.R": (
            "# we used to call system('ls') and download.file() here\n"
            "system_total <- sum(c(1, 2))\n"
            'note <- "download.file is not allowed in the enclave"\n'
            "my_url <- 3; x$system <- 1\n"
            'msg <- paste0("a", "/", "b")\n'
        )
    }
    report = await check(tmp_path, files)
    assert report.verdict == "pass", report.findings


async def test_odd_r_file_names_cannot_confuse_the_parser_protocol(tmp_path):
    report = await check(tmp_path, {"a\nb.R": "x <- 1\n", "z.R": "system('id')\n"})
    assert {(f.file, f.rule) for f in report.findings} == {("a\\nb.R", "file-name"), ("z.R", "shell")}


async def test_only_review_findings_give_review(tmp_path):
    report = await check(tmp_path, {"main.R": 'h <- Sys.getenv("X")\n'})
    assert report.verdict == "review"


async def test_parse_error_is_a_failure_with_r_message(tmp_path):
    report = await check(tmp_path, {"main.R": "x <- 1\ny <- (2 +\nz <- ]\n"})
    [f] = report.findings
    assert (f.file, f.rule, f.severity, f.line) == ("main.R", "parse-error", "fail", 3)
    assert f.message.startswith("does not parse: unexpected")


async def test_rmd_chunks_are_parsed_and_prose_is_not(tmp_path):
    rmd = "---\ntitle: t\n---\nWe never call system() here.\n\n```{r}\nx <- 1\nsystem2('id')\n```\n"
    report = await check(tmp_path, {"report.Rmd": rmd})
    assert [(f.line, f.rule) for f in report.findings] == [(8, "shell")]


async def test_secrets_are_found_everywhere_and_masked(tmp_path):
    aws, gh = "AKIA" + "Q3EXAMPLE7ABCDEF", "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    pw = "hunter2-Correct-Horse"
    files = {
        "main.R": f'Sys.setenv(ANALYSIS_API_KEY = "a9sd8f7g6h5j4k")\npassword <- "{pw}"\n',
        "notes.txt": f"my key {aws}\n",
        "deploy/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "config.yml": f"token: {gh}\nother: Zq8Lm2Xv9Rt4Kp7Wn3Bj6Hc1Df5Gs0Ay\n",
        ".Renviron": "ANALYSIS_API_KEY=a7f3kq9zB2xY8wLm4nP0Zq8Lm2Xv9Rt4Kp7Wn3\n",
    }
    report = await check(tmp_path, files)
    got = {(f.file, f.rule) for f in report.findings}
    assert got == {
        ("main.R", "analysis-api-key"),
        ("main.R", "password"),
        ("notes.txt", "aws-access-key-id"),
        ("deploy/id_rsa", "private-key"),
        ("config.yml", "github-token"),
        ("config.yml", "high-entropy-token"),
    }
    assert report.verdict == "fail" and all(f.severity == "fail" for f in report.findings)
    dumped = repr(report.to_dict())
    for secret in (
        aws,
        gh,
        pw,
        "a9sd8f7g6h5j4k",
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
        "Zq8Lm2Xv9Rt4Kp7Wn3Bj6Hc1Df5Gs0Ay",
    ):
        assert secret not in dumped
    assert "AKIA****" in dumped and "masked" in dumped


async def test_checker_failure_fails_closed_with_a_clear_message(tmp_path):
    report = await check(tmp_path, {"main.R": "x <- 1\n"}, CodeRules(rscript="/nonexistent/Rscript"))
    [f] = report.findings
    assert (report.verdict, f.rule) == ("fail", "check-error")
    assert "not a problem with your analysis" in f.message


@pytest.mark.parametrize(
    "code",
    [
        "`system`('id')\n",
        "f <- processx::run\n",
        "x <- sys:::exec_wait('id')\n",
        "lapply(cmds, system)\n",
        "p <- pipe('ls')\n",
    ],
)
async def test_evasions_are_caught(tmp_path, code):
    report = await check(tmp_path, {"main.R": code})
    assert report.verdict == "fail" and report.findings[0].rule == "shell", report.findings


@pytest.mark.parametrize(
    "code, rule, severity",
    [
        ('f <- get(paste0("download", ".file"))\n', "indirection", "review"),
        ('g <- match.fun(paste0("sys", "tem"))\n', "indirection", "review"),
        ('z <- do.call(paste0("sys", "tem"), list("id"))\n', "indirection", "review"),
        ("h <- get(name_from_data)\n", "indirection", "review"),
        ('p <- readLines(file.path("", "etc", "shadow"))\n', "outside-project", "fail"),
        ('p <- file.path("", "home", "other")\n', "outside-project", "review"),
        ('utils::nsl("example.org")\n', "network", "fail"),
        ("e <- eval(parse_me)\n", "dynamic-code", "review"),
    ],
)
async def test_indirection_patterns_are_flagged(tmp_path, code, rule, severity):
    report = await check(tmp_path, {"main.R": code})
    assert [(f.rule, f.severity) for f in report.findings] == [(rule, severity)], report.findings


@pytest.mark.parametrize(
    "code",
    [
        "x <- do.call(rbind, parts)\n",
        'p <- file.path("output", "a.csv")\n',
        'y <- get("mtcars")\n',
        "s <- sapply(1:3, function(i) i * 2)\n",
    ],
)
async def test_ordinary_code_is_not_flagged_as_indirection(tmp_path, code):
    report = await check(tmp_path, {"main.R": code})
    assert report.verdict == "pass", report.findings


async def test_no_message_claims_a_key_in_the_enclave(tmp_path):
    report = await check(tmp_path, {"main.R": 'k <- Sys.getenv("ANALYSIS_API_KEY")\n'})
    assert "sets only ANALYSIS_API_KEY" not in report.findings[0].message
    assert "never as a key" in report.findings[0].message
