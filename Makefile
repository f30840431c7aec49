# The project's commands; each installs what it needs into a local virtual environment.
.PHONY: test demo bench dist cluster

test:  ## lint, type-check and run the whole test suite on the newest and the oldest supported Airflow
	bash scripts/test.sh

demo:  ## start the sandbox, run the example catalog refresh end to end, print where the results are
	bash scripts/demo.sh

bench:  ## run the benchmarks against the sandbox and write bench/results/report.{json,md}
	bash scripts/bench.sh

dist:  ## build the sdist and the wheel (from the sdist) into dist/ and check them with twine
	bash scripts/dist.sh

cluster:  ## start a real deployment on loopback (Postgres, Redis, two Celery workers, the sandbox); Ctrl-C stops it
	bash scripts/cluster.sh
