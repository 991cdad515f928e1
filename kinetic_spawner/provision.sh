#!/usr/bin/env bash
# Kinetic workspace provisioning: the same script on this machine (local backend) and on an EC2
# host (aws backend, run over SSH). Run as the workspace user, with HOME = the analysis home.
#
# Inputs, from the ENVIRONMENT only (argv is readable by anyone on the host via /proc):
#   ANALYSIS_ID            Kinetic analysis id (digits)                                  required
#   ANALYSIS_API_KEY       the analysis key; written to ~/.Renviron for R                required
#   KINETIC_URL            Kinetic base URL (or the stand-in's)                          required
#   CUTOFF_DATE            YYYY-MM-DD written into a newly seeded main.r        default: today
#   KINETIC_BLANK_PROJECT  folder holding the blank project     default: blank_project/ beside this file
#   KINETIC_FETCH_DATA     command that downloads the data          default: kinetic-fetch-data
#
# Idempotent; it never overwrites or deletes a researcher's file:
#   - ~/.Renviron: the ANALYSIS_API_KEY line is replaced (or added); every other line is kept
#   - the blank project is copied only when ~/kinetic/main.r is missing, and then the cutoff date is
#     set in main.r; an existing project is left as it is
#   - synthetic data is (re)downloaded into ~/kinetic/data for the cutoff date in main.r; files are
#     replaced atomically, others in data/ are left alone
# Progress lines on stdout start with "::step " (read by the spawner); errors go to stderr.
set -euo pipefail
umask 077

fail() { echo "provision: $*" >&2; exit 1; }
step() { echo "::step $*"; }

[[ -n "${HOME:-}" && -d "$HOME" ]] || fail "HOME is not an existing directory"
[[ "${ANALYSIS_ID:-}" =~ ^[1-9][0-9]*$ ]] || fail "ANALYSIS_ID must be a Kinetic analysis id (digits)"
[[ -n "${ANALYSIS_API_KEY:-}" ]] || fail "ANALYSIS_API_KEY is not set"
[[ "$ANALYSIS_API_KEY" =~ ^[A-Za-z0-9_-]+$ ]] || fail "ANALYSIS_API_KEY has unexpected characters"
[[ -n "${KINETIC_URL:-}" ]] || fail "KINETIC_URL is not set"
CUTOFF_DATE="${CUTOFF_DATE:-$(date +%F)}"
[[ "$CUTOFF_DATE" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || fail "CUTOFF_DATE must look like 2026-01-31"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
blank="${KINETIC_BLANK_PROJECT:-$here/blank_project}"
read -r -a fetch <<<"${KINETIC_FETCH_DATA:-kinetic-fetch-data}"

chmod 700 "$HOME"
project="$HOME/kinetic"
main="$project/main.r"

# 1. ~/.Renviron: upsert the key line. printf and read are builtins: the key never reaches argv.
renv="$HOME/.Renviron"
tmp="$(mktemp "$HOME/.Renviron.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
if [[ -f "$renv" ]]; then
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" == ANALYSIS_API_KEY=* ]] || printf '%s\n' "$line"
  done <"$renv" >"$tmp"
fi
printf 'ANALYSIS_API_KEY=%s\n' "$ANALYSIS_API_KEY" >>"$tmp"
chmod 600 "$tmp"
mv -f "$tmp" "$renv"
trap - EXIT

# 2. The project: seed only when main.r is missing.
if [[ -f "$main" ]]; then
  step "kept the existing project"
else
  [[ -f "$blank/kinetic/main.r" ]] || fail "blank project not found at $blank"
  mkdir -p "$project"
  # --no-clobber: a researcher file that exists without main.r is kept as it is
  cp -R --no-clobber "$blank/." "$HOME/"
  sed "s/^cutoff_date = \"[^\"]*\"/cutoff_date = \"$CUTOFF_DATE\"/" "$main" >"$main.tmp"
  mv -f "$main.tmp" "$main"
  step "seeded the blank project (cutoff $CUTOFF_DATE)"
fi
mkdir -p "$project/data" "$project/output"

# 3. Synthetic data for the cutoff the project uses (the researcher may have changed it).
cutoff="$(sed -n 's/^cutoff_date = "\([0-9]\{4\}-[0-9][0-9]-[0-9][0-9]\)".*/\1/p' "$main" | head -n 1)"
cutoff="${cutoff:-$CUTOFF_DATE}"
step "downloading synthetic data (cutoff $cutoff)"
set +e
CUTOFF_DATE="$cutoff" KINETIC_DATA_DIR="$project/data" "${fetch[@]}"
status=$?
set -e
if [[ $status -ne 0 ]]; then
  if compgen -G "$project/data/*.csv" >/dev/null; then
    step "WARNING: could not refresh the synthetic data; kept the data from last time"
  else
    fail "could not download the synthetic data from Kinetic (see the message above)"
  fi
else
  step "synthetic data ready"
fi
step "done"
