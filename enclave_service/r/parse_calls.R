# Tokenise R sources with R's own parser, for enclave_service/code_checks.py.
# Never evaluates the researcher's code: parse() and getParseData() only read it; str2lang() is applied
# to single string-constant tokens to decode their escapes.
# stdin: one file path per line.  stdout, one record per line, tab separated, \ \t \n \r escaped:
#   T <file index> <line> <token> <text>     a terminal token (comments left out)
#   E <file index> <line> <message>          the file does not parse (or cannot be read)
# .Rmd/.qmd: only ```{r} chunks are parsed; other lines become blank so line numbers stay true.
esc <- function(x) {
  x <- gsub("\\", "\\\\", x, fixed = TRUE)
  x <- gsub("\t", "\\t", x, fixed = TRUE)
  x <- gsub("\r", "\\r", x, fixed = TRUE)
  gsub("\n", "\\n", x, fixed = TRUE)
}
chunks <- function(lines) {
  out <- character(length(lines))
  inside <- FALSE
  for (i in seq_along(lines)) {
    if (!inside && grepl("^\\s*```+\\s*\\{[rR]([ ,}]|$)", lines[i])) { inside <- TRUE; next }
    if (inside && grepl("^\\s*```+\\s*$", lines[i])) { inside <- FALSE; next }
    if (inside) out[i] <- lines[i]
  }
  out
}
con <- file("stdin")
paths <- readLines(con, warn = FALSE)
close(con)
for (i in seq_along(paths)) {
  p <- paths[[i]]
  lines <- tryCatch(readLines(p, warn = FALSE, encoding = "UTF-8"), error = function(e) NULL)
  if (is.null(lines)) { cat("E\t", i, "\t0\tcannot be read\n", sep = ""); next }
  if (grepl("\\.(rmd|qmd)$", tolower(p))) lines <- chunks(lines)
  exprs <- tryCatch(parse(text = lines, keep.source = TRUE, encoding = "UTF-8"), error = function(e) e)
  if (inherits(exprs, "error")) {
    msg <- conditionMessage(exprs)
    m <- regmatches(msg, regexec("^<text>:([0-9]+):[0-9]+: ", msg))[[1]]
    line <- if (length(m) == 2) m[[2]] else "0"
    cat("E\t", i, "\t", line, "\t", esc(msg), "\n", sep = "")
    next
  }
  pd <- utils::getParseData(exprs, includeText = TRUE)
  if (is.null(pd) || nrow(pd) == 0) next
  pd <- pd[pd$terminal & pd$token != "COMMENT", ]
  pd <- pd[order(pd$line1, pd$col1), ]
  text <- pd$text
  s <- pd$token == "STR_CONST"
  text[s] <- vapply(text[s], function(t) {
    v <- tryCatch(str2lang(t), error = function(e) t)
    if (is.character(v) && length(v) == 1 && !is.na(v)) v else t
  }, "", USE.NAMES = FALSE)
  cat(paste0("T\t", i, "\t", pd$line1, "\t", pd$token, "\t", esc(text), "\n"), sep = "")
}
