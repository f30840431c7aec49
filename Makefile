# The project's commands; each installs what it needs into a local virtual environment.
.PHONY: test test-latest constraints demo review bench fuzz dist cluster

test:  ## lint, type-check and run the whole test suite on the newest and the oldest supported Airflow (pinned by constraints/)
	bash scripts/test.sh

test-latest:  ## the canary: make test on the newest releases of every dependency (in .venv-latest, .venv-floor-latest)
	CUTOUT_UNPINNED=1 bash scripts/test.sh

constraints:  ## regenerate constraints/airflow-<version>.txt from the newest releases; then run make test before committing
	bash scripts/constraints.sh

demo:  ## start the sandbox, run the example catalog refresh end to end, print where the results are
	bash scripts/demo.sh

review:  ## a local review UI: Airflow with a reviewer and a viewer, example_cutout_review waiting at its gate; Ctrl-C stops it
	bash scripts/review.sh

fuzz:  ## the model of the catalog's long profile (30 minutes or more); an example it finds becomes a regression test
	bash scripts/fuzz.sh

bench:  ## run the benchmarks against the sandbox and write bench/results/report.{json,md}
	bash scripts/bench.sh

dist:  ## build the sdist and the wheel (from the sdist) into dist/ and check them with twine
	bash scripts/dist.sh

cluster:  ## start a real deployment on loopback (Postgres, Redis, two Celery workers, the sandbox); Ctrl-C stops it
	bash scripts/cluster.sh
