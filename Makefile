# Two commands on a fresh Debian/Ubuntu machine with Python 3, make and apt:
#   make demo   -- the whole pipeline on an embedded default
#   make test   -- install everything into .venv (and Home Assistant's venv, cached) and run the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# apt needs root; use sudo when we are not root and sudo exists.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1 && [ "$$(id -u)" != 0 ] && echo sudo)

.PHONY: demo test lint venv ha-venv system-deps bench clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install it with 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --upgrade pip

# Re-install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Mosquitto (the MQTT broker the tests and the demo start themselves), mosquitto_sub for
# the README's quick starts, kcat for the benchmarks. amqtt, a test dependency, stands in
# only where the Debian package cannot be installed. promtool (Debian package prometheus,
# without the node exporter it recommends) checks deploy/prometheus/ in tests/test_monitoring.py.
# Chromium and its chromedriver (the web page's browser tests, driven by Selenium) and nginx
# (the reverse proxy at a path prefix in those tests), all Debian's: nothing downloads a browser.
system-deps:
	@{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } \
	  && command -v mosquitto_sub >/dev/null 2>&1 && command -v kcat >/dev/null 2>&1 || { \
	  echo "installing mosquitto, mosquitto-clients, kcat (Debian packages)"; \
	  ( $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq mosquitto mosquitto-clients kcat >/dev/null ) \
	  || echo "mosquitto could not be installed; MQTT tests fall back to amqtt"; }
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing prometheus (Debian package, for promtool)"; \
	  ( $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus >/dev/null ) \
	  || echo "prometheus could not be installed; tests/test_monitoring.py needs promtool"; }
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/sbin/nginx ]; } || { \
	  echo "installing chromium, chromium-driver, nginx (Debian packages, for tests/web)"; \
	  ( $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq chromium chromium-driver nginx >/dev/null ) \
	  || echo "chromium or nginx could not be installed; tests/web/test_page.py needs them"; }

demo: venv system-deps
	$(BIN)/facespace-bridge demo

lint: venv
	$(BIN)/ruff check facespace_bridge tests bench
	$(BIN)/ruff format --check facespace_bridge tests bench

# Home Assistant's own venv (Python 3.13), the oracle of the MQTT discovery tests: built once
# into ~/.cache/facespace-bridge and reused (tests/fixtures/homeassistant.py says how).
ha-venv: venv
	$(BIN)/python -m tests.fixtures.homeassistant build

# Two workers, each taking whole test files (--dist loadfile: a file's module-scoped brokers and
# Home Assistant start once): most of the suite waits on brokers, Home Assistant and browsers,
# so two workers halve its wall time even on two cores.
test: venv system-deps lint ha-venv
	$(BIN)/pytest -n 2 --dist loadfile

bench: venv system-deps
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python bench/run_all.py

# Regenerate docs/cli.md, docs/configuration.md, docs/schema-reference.md from the code;
# tests/test_docs.py fails when they are stale.
docs: venv
	$(BIN)/python -m facespace_bridge.docgen

clean:
	rm -rf $(VENV) dist build .pytest_cache .ruff_cache
