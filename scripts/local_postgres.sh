#!/usr/bin/env bash
# A private PostgreSQL server for HPO studies shared by several workers (docs/SCALE_OUT.md).
#
#   scripts/local_postgres.sh [DIR]     # DIR: where the cluster lives (default: a new temp dir)
#
# Initialises a cluster in DIR/data (Debian's `postgresql` package: apt-get install -y postgresql),
# starts it on a free port of 127.0.0.1 (DIR/server.log), creates the database `tbjax`, and prints
# ONE line on stdout, the URL to pass as `python -m tbjax.hpo --storage URL`. Everything else goes
# to stderr. Stop it with: pg_ctl -D DIR/data stop  (as the user that started it; `postgres` for root).
# Other machines: start it with listen_addresses='*' and a password instead (docs/SCALE_OUT.md).
set -euo pipefail

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  bindir="$(pg_config --bindir)"
else
  bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
fi
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "error: PostgreSQL's initdb was not found: install the server (e.g. apt-get install -y postgresql)" >&2
  exit 2
fi

dir="${1:-$(mktemp -d -t tbjax-pg.XXXXXX)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

as_owner=()
if [ "$(id -u)" = 0 ]; then  # initdb refuses to run as root: the cluster belongs to the postgres user
  chown postgres "$dir"
  as_owner=(runuser -u postgres --)
fi

"${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U tbjax --auth=trust -E UTF8 >&2
"${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >&2
"${as_owner[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U tbjax tbjax >&2
echo "postgresql://tbjax@127.0.0.1:$port/tbjax"
