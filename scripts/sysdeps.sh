#!/usr/bin/env bash
# Installs the system packages the test suite needs (run by `make test`).
# Each step checks first, so a machine that has everything does nothing.
set -euo pipefail
