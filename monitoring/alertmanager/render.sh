#!/bin/sh
# Fills the ${NAME} placeholders of an Alertmanager config from the environment, then
# runs the rest of the command line (Alertmanager) on the result:
#   sh render.sh TEMPLATE OUTPUT [COMMAND ARGS...]
# Runs on the Alertmanager image's busybox (sh, awk), so POSIX only. Values are escaped for
# the double-quoted YAML strings the placeholders sit in, so a password holding " or \ stays
# one string; they are spliced in by concatenation, never by sub(), whose replacement text
# treats & and \ specially. A placeholder whose variable is unset stops the container with
# its name rather than starting Alertmanager on a half-filled config.
set -eu

if [ $# -lt 2 ]; then
  echo "usage: render.sh TEMPLATE OUTPUT [COMMAND ARGS...]" >&2
  exit 2
fi
template=$1
output=$2
shift 2

case "${ALERT_SMTP_REQUIRE_TLS:-true}" in
  true | false) ;;
  *)
    echo "render.sh: ALERT_SMTP_REQUIRE_TLS must be true or false" >&2
    exit 2
    ;;
esac

# The rendered file holds the SMTP password and the relay token: readable by its owner only.
umask 077
if ! awk -v require_tls="${ALERT_SMTP_REQUIRE_TLS:-true}" '
  function quoted(value,    out, i, c) {
    out = ""
    for (i = 1; i <= length(value); i++) {
      c = substr(value, i, 1)
      if (c == "\\" || c == "\"") out = out "\\"
      out = out c
    }
    return out
  }
  # Comments are copied as they are: they may mention ${NAME} without meaning it.
  /^[ \t]*#/ { print; next }
  {
    line = $0
    rendered = ""
    while (match(line, /\$\{[A-Za-z_][A-Za-z0-9_]*\}/)) {
      name = substr(line, RSTART + 2, RLENGTH - 3)
      if (!(name in ENVIRON)) {
        printf "render.sh: %s is not set (line %d of %s)\n", name, FNR, FILENAME > "/dev/stderr"
        failed = 1
      }
      rendered = rendered substr(line, 1, RSTART - 1) quoted(ENVIRON[name])
      line = substr(line, RSTART + RLENGTH)
    }
    rendered = rendered line
    if (require_tls == "false" && rendered ~ /^[ ]*smtp_require_tls: true[ ]*$/) {
      sub(/true/, "false", rendered)
    }
    print rendered
  }
  END { exit failed }
' "$template" >"$output.tmp"; then
  rm -f "$output.tmp"
  exit 1
fi
mv "$output.tmp" "$output"

if [ $# -gt 0 ]; then
  exec "$@"
fi
