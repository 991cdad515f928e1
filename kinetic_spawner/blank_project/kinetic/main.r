# Kinetic analysis: your R project starts here.
#
# Your workspace holds SYNTHETIC data shaped like the real responses. Write and test your
# analysis here; when you submit, the same script runs on the real data inside the enclave and
# only what it writes to output/ can come back to you, after the output checks and a review.
#
# Rules for a script that runs in the enclave:
#   - base R (and the packages already installed); no install.packages(), no network
#   - read data from data/*.csv; write results to output/
#   - write aggregates (counts, means), never row-level data

# Responses up to this date are used. Provisioning set it to the day this project was created;
# change it to fix the data you analyse (the workspace downloads synthetic data for this date).
cutoff_date = "YYYY-MM-DD"

args <- commandArgs(trailingOnly = FALSE)
file_arg <- sub("^--file=", "", args[grep("^--file=", args)])
here <- if (length(file_arg) == 1) dirname(normalizePath(file_arg)) else getwd()
if (!file.exists(file.path(here, "data")) && file.exists(file.path(here, "kinetic", "data"))) {
  here <- file.path(here, "kinetic")
}
data_dir <- file.path(here, "data")
output_dir <- file.path(here, "output")
dir.create(output_dir, showWarnings = FALSE, recursive = TRUE)

files <- list.files(data_dir, pattern = "\\.csv$", full.names = TRUE)
if (length(files) == 0) {
  stop("no data in ", data_dir, ": reopen the workspace from Kinetic to download it")
}
responses <- do.call(rbind, lapply(files, read.csv, stringsAsFactors = FALSE))
cat("Read", nrow(responses), "responses from", length(files), "file(s); cutoff", cutoff_date, "\n")

# A small aggregate: per course, how many responses and the mean reading time and quiz score.
by_course <- aggregate(
  cbind(minutes_reading, quiz_score) ~ course,
  data = responses,
  FUN = function(x) round(mean(x), 2)
)
counts <- aggregate(quiz_score ~ course, data = responses, FUN = length)
names(counts)[2] <- "responses"
summary_table <- merge(counts, by_course, by = "course")

write.csv(summary_table, file.path(output_dir, "summary_by_course.csv"), row.names = FALSE)
print(summary_table)
cat("Wrote", file.path(output_dir, "summary_by_course.csv"), "\n")
