#!/usr/bin/env bash
# Installs the system packages the test suite needs (run by `make test`).
# Each step checks first, so a machine that has everything does nothing.
set -euo pipefail

# PostgreSQL server binaries (initdb, pg_ctl, postgres) for the datastore tests, which start a
# private server in a temporary directory as the `postgres` OS user.
have_postgres() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
        && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null \
        && id -u postgres >/dev/null 2>&1
}

if ! have_postgres; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "sysdeps: PostgreSQL is missing; run 'make sysdeps' as root to install it" >&2
        exit 1
    fi
    echo "sysdeps: installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
