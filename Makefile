# Two commands on a fresh machine with Python 3.11:
#   make run    set up (virtualenv, requirements, migrations, static files) and serve on http://127.0.0.1:8000
#               with the production server (gunicorn + uvicorn workers, gunicorn.conf.py)
#   make test   set up (plus test requirements and Debian's Chromium) and run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1:8000

.PHONY: run test setup secret-key migrate chromium wrk bench bench-admin clean

$(BIN)/.requirements: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.requirements-dev: requirements-dev.txt $(BIN)/.requirements
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# With DEBUG off (the default) the gateway refuses to start without a SECRET_KEY: give this checkout a random
# one of its own in .env (gitignored), once. An existing SECRET_KEY line is left alone.
secret-key:
	@grep -qs '^SECRET_KEY=.' .env || { \
		printf '\nSECRET_KEY=%s\n' "$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" >> .env; \
		echo "Wrote a random SECRET_KEY to .env"; }

setup: $(BIN)/.requirements secret-key
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0

run: setup
	@echo "API calls need a key: $(BIN)/python manage.py create_api_key demo  (the key is its last line)"
	GUNICORN_BIND=$(HOST) WEB_CONCURRENCY=$${WEB_CONCURRENCY:-1} $(BIN)/gunicorn

# The browser tests drive Debian's Chromium; Playwright is never allowed to download a browser of its own.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "Chromium is missing: run 'sudo apt-get install -y chromium' (browser tests are skipped without it)"; \
		fi; \
	fi

test: $(BIN)/.requirements-dev chromium
	$(BIN)/python -m pytest

# The load phases drive wrk (Debian's package).
wrk:
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } || \
		echo "wrk is missing: run 'sudo apt-get install -y wrk'"

bench: $(BIN)/.requirements wrk
	$(BIN)/python bench/load.py

# The admin, the usage dashboard and prune_audit at 1M audit rows (N=100000 for a quick run).
bench-admin: $(BIN)/.requirements
	$(BIN)/python bench/admin_scale.py -n $${N:-1000000}

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
