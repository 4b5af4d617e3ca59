#!/usr/bin/env bash
# Make sure the services the tests use are installed and running on this machine (Debian, root):
# PostgreSQL on 127.0.0.1:5432 with trust authentication and a database named "test".
set -euo pipefail

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "PostgreSQL is not answering on 127.0.0.1:5432: installing and starting it"
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  pg_version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  pg_hba="/etc/postgresql/$pg_version/main/pg_hba.conf"
  grep -q '^host all all 127.0.0.1/32 trust' "$pg_hba" || sed -i '1i host all all 127.0.0.1/32 trust' "$pg_hba"
  pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  pg_isready -h 127.0.0.1 -p 5432
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
  || createdb -h 127.0.0.1 -U postgres test
echo "PostgreSQL: ready on 127.0.0.1:5432"

# The demo browser test (tests/end_to_end/test_demo_browser.py): headless Chromium and its driver, from Debian.
if ! command -v chromedriver >/dev/null 2>&1; then
  echo "chromedriver is missing: installing chromium and chromium-driver"
  apt_install chromium chromium-driver
fi
echo "Chromium: $(chromium --version 2>/dev/null || echo missing); $(chromedriver --version 2>/dev/null || echo 'chromedriver missing')"

# The dashboard and alert tests (tests/observability/): promtool and prometheus, from Debian.
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  echo "promtool or prometheus is missing: installing prometheus"
  apt_install prometheus
fi
echo "Prometheus: $(prometheus --version 2>&1 | head -n 1)"

# Redis on 127.0.0.1:6379 for the shared circuit breaker state tests (tests/test_breaker_shared.py).
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "Redis is not answering on 127.0.0.1:6379: installing and starting it"
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 30); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 1; done
  redis-cli -h 127.0.0.1 ping
fi
echo "Redis: ready on 127.0.0.1:6379"
# The outage tests start throwaway servers of their own on other ports (one frozen with SIGSTOP:
# tests/breaker/test_hanging_cache.py), also where Redis above runs elsewhere (a service container).
command -v redis-server >/dev/null || apt_install redis-server

# MariaDB on 127.0.0.1:3306, root without a password, for the check that refuses it before migrate
# fails half way (tests/conf/test_database_vendor_check.py).
if ! mysqladmin -h 127.0.0.1 -u root ping >/dev/null 2>&1; then
  echo "MariaDB is not answering on 127.0.0.1:3306 as root: installing and starting it"
  command -v mariadbd >/dev/null || apt_install mariadb-server
  service mariadb start >/dev/null || service mysql start >/dev/null
  for _ in $(seq 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
  # Debian's root logs in through the unix socket only: allow it over TCP from loopback too.
  mysql -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION"
  mysqladmin -h 127.0.0.1 -u root ping
fi
echo "MariaDB: ready on 127.0.0.1:3306"
