#!/usr/bin/env bash
# Start the services the test suite talks to, installing them from Debian's packages where absent:
#   PostgreSQL on 127.0.0.1:5432 (trust auth for loopback, database "test", user "postgres")
#   Redis      on 127.0.0.1:6379 (no persistence)
#   Chromium + chromedriver (headless; the HTML report test opens its page in a real browser)
#   docker-compose (only to validate docker-compose.yml: no Docker engine runs here)
# Idempotent: running it again leaves running services alone. Needs root (apt-get, pg_ctlcluster).
# `make services` runs it; `.ci/run` runs it before `make test`.
set -euo pipefail

need_install=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_install+=(postgresql)
command -v redis-server  >/dev/null 2>&1 || need_install+=(redis-server)
command -v chromium      >/dev/null 2>&1 || need_install+=(chromium)
command -v chromedriver  >/dev/null 2>&1 || need_install+=(chromium-driver)
command -v docker-compose >/dev/null 2>&1 || need_install+=(docker-compose)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "services: installing ${need_install[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

# --- PostgreSQL -------------------------------------------------------------------------------
ver=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1{print $1}')
if [ -z "$ver" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main >/dev/null
fi
hba="/etc/postgresql/$ver/main/pg_hba.conf"
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
  # trust for loopback first: the first matching line wins
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main reload >/dev/null 2>&1 || true
fi
if ! pg_lsclusters --no-header | awk -v v="$ver" '$1==v && $2=="main"{print $4}' | grep -q online; then
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
fi
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p 5432 >/dev/null || { echo "services: PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "create database test"
fi

# --- Redis -------------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/streamscore-redis.log
  for _ in $(seq 1 40); do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break
    sleep 0.25
  done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "services: Redis did not come up on 127.0.0.1:6379"; exit 1; }

echo "services: PostgreSQL $ver on 127.0.0.1:5432 (database test), Redis on 127.0.0.1:6379"
