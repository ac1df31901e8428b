# The two commands of the README. Both set the environment up first (scripts/setup is idempotent).
SHELL := /bin/bash
export NM_DISABLE_ANALYTICS := 1

.PHONY: run test test-fast test-integration setup

setup:
	@scripts/setup >/dev/null

# The main job on the embedded default (sklearn digits, a small torchvision model), logged to ./mlflow.db.
run:
	@VENV=$$(scripts/setup) && PATH="$$VENV/bin:$$PATH" sparsify.run training-aware $(ARGS)

# The whole test suite, end-to-end tests included (what CI runs). loadgroup keeps the tests
# sharing one sweep (xdist_group "sweep") on one worker, so the sweep runs once. Then the tests
# marked serial run alone (they judge whether the machine is idle). Exit code 5 = no test selected.
test:
	@VENV=$$(scripts/setup) && export PATH="$$VENV/bin:$$PATH" && \
	  { python -m pytest -n 2 --dist loadgroup -m "not serial" $(ARGS); a=$$?; } ; \
	  { python -m pytest -m serial $(ARGS); b=$$?; } ; \
	  for code in $$a $$b; do [ $$code -eq 0 ] || [ $$code -eq 5 ] || exit $$code; done

# Everything but the end-to-end runs: the quick loop while developing.
test-fast:
	@VENV=$$(scripts/setup) && PATH="$$VENV/bin:$$PATH" python -m pytest -n 2 --dist loadgroup -m "not e2e" $(ARGS)

# Only the remote-tracking tests: real PostgreSQL (apt-installed if missing) and mlflow servers.
test-integration:
	@VENV=$$(scripts/setup) && PATH="$$VENV/bin:$$PATH" python -m pytest -m integration $(ARGS)
