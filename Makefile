# medlake — two commands on a fresh machine: `make demo` and `make test`.
# Both create the environment (.venv/, from uv.lock) and fetch the delta-spark jars
# (pinned, from Maven Central) when they are missing. Nothing downloads at run time.

PYTHON      ?= python3
UV_VERSION  := 0.13.8
VENV        := .venv
BIN         := $(VENV)/bin
JARS        := $(VENV)/jars
DELTA_JARS  := io.delta:delta-spark_4.2_2.13:4.4.0 io.delta:delta-storage:4.4.0
STAMP       := $(VENV)/.medlake-env
# the production profile (infra/): versitygw from the Go module proxy, S3A jars from Maven Central
INFRA_BIN   := $(VENV)/infra-bin
S3A_JARS    := $(VENV)/jars-s3a
VERSITYGW   := github.com/versity/versitygw/cmd/versitygw@v1.8.0
HELM        := helm.sh/helm/v4/cmd/helm@v4.3.2
# hadoop-aws 3.5.0 (pyspark's Hadoop) and the AWS SDK v2 modules S3A loads, pinned in infra/s3a/pom.xml
S3A_POM     := infra/s3a/pom.xml
DEMO_DIR    ?= .medlake/demo
PATIENTS    ?= 500
SEED        ?= 7

export GX_ANALYTICS_ENABLED := false
# Some shells here set PYTHONDONTWRITEBYTECODE=1: every process would then recompile Airflow,
# GX and dbt from source (~10 s each). An empty value lets Python cache bytecode again.
export PYTHONDONTWRITEBYTECODE :=
export MLFLOW_ALLOW_FILE_STORE := false
export PYSPARK_PYTHON := $(abspath $(BIN)/python)

.PHONY: env postgres infra-deps infra-test-deps infra-check prod-up prod-down prod-demo browser demo test test-fast airflow bench bench-scale bench-sources bench-clean lint clean

env: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
	  $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(PYTHON) -m uv sync --frozen --extra dev --python $(PYTHON)
	@mkdir -p $(JARS)
	@for coord in $(DELTA_JARS); do \
	  name=$$(echo $$coord | awk -F: '{print $$2"-"$$3".jar"}'); \
	  [ -f $(JARS)/$$name ] || mvn -q dependency:copy -Dartifact=$$coord -DoutputDirectory=$(JARS) || exit 1; \
	done
	@touch $(STAMP)

# What the production profile and infra-check run beyond the venv: built (versitygw, helm from the
# Go module proxy) or fetched (the S3A jars, 36 jars / 13 MB from Maven Central, ~12 s) once, kept
# under .venv/. `make test` builds and fetches them all: the profile tests start versitygw and Spark.
infra-deps: infra-test-deps
infra-test-deps: postgres $(INFRA_BIN)/versitygw $(INFRA_BIN)/helm $(S3A_JARS)/.complete

# PostgreSQL 15 from Debian's packages, when the machine lacks it (as root only).
postgres:
	@[ -x /usr/lib/postgresql/15/bin/initdb ] || { 	  if [ "$$(id -u)" -eq 0 ]; then 	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null; 	  else echo "PostgreSQL 15 is not installed (needs root): the production-profile test will fail"; fi; }

$(INFRA_BIN)/versitygw:
	@mkdir -p $(INFRA_BIN)
	GOBIN=$(abspath $(INFRA_BIN)) GOFLAGS=-buildvcs=false nice -n 10 go install $(VERSITYGW)

# hadoop-aws and the SDK modules, not the SDK's 650 MB `bundle` (infra/README.md, "S3A jars");
# a changed pom replaces the whole set
$(S3A_JARS)/.complete: $(S3A_POM)
	@rm -rf $(S3A_JARS) && mkdir -p $(S3A_JARS)
	mvn -q -f $(S3A_POM) dependency:copy-dependencies -DoutputDirectory=$(abspath $(S3A_JARS))
	@touch $@

# Kubernetes, checked offline: helm lint + template of infra/helm/medlake, the manifests validated
# against the schemas kubernetes-validate bundles, the official Airflow chart's values checked
infra-check: env $(INFRA_BIN)/helm
	$(BIN)/python infra/check.py

$(INFRA_BIN)/helm:
	@mkdir -p $(INFRA_BIN)
	GOBIN=$(abspath $(INFRA_BIN)) GOFLAGS=-buildvcs=false nice -n 10 go install $(HELM)

# The production profile on this machine (infra/README.md): PostgreSQL, versitygw (S3), MLflow,
# Airflow, Spark standalone + Connect; state in .medlake-prod/ ($$MEDLAKE_PROD_HOME), stopped by pid
prod-up: env infra-deps
	$(BIN)/python infra/prod.py up

prod-down:
	$(BIN)/python infra/prod.py down

prod-demo: env infra-deps
	$(BIN)/python infra/demo.py --patients $(or $(DEMO_PATIENTS),100)

# Headless Chromium (Debian's package) for the compliance report's browser test; as root only.
# Without it that one test is skipped and says so.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" -eq 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (needs root): the report's browser test will be skipped"; fi; }

demo: env
	$(BIN)/medlake demo --out $(DEMO_DIR) --patients $(PATIENTS) --seed $(SEED)

# Two pytest workers (pytest-xdist), a test file per worker at a time: module fixtures run once,
# and each worker has its own medlake home, Airflow home and keys (tests/conftest.py). The profile
# tests (tests/infra/) start PostgreSQL, versitygw, MLflow and the Spark daemons from infra-test-deps.
# tests/infra/test_prod_spark.py (the Spark daemons) takes 3-7 min of one worker (infra/README.md).
test: env browser infra-test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder --durations=25

test-fast: env
	$(BIN)/python -m pytest -q -m "not e2e and not spark"

airflow: env
	$(BIN)/medlake airflow standalone

bench: env
	$(BIN)/python bench/run.py --patients 10000

# The data plane at hospital scale: FHIR bulk at 100k/1M/5M resources next to the floor measured
# in the same run, Spark local[2] at 100k/1M; table printed, bench/out/scale.{json,png} written
bench-scale: env
	$(BIN)/python bench/scale.py --sizes $(or $(SIZES),100000,1000000,5000000) --spark-sizes $(or $(SPARK_SIZES),100000,1000000)

# Per-source throughput (bench/README.md states sizes and figures)
bench-sources: env
	$(BIN)/python bench/ingest_csv.py --rows 100000
	$(BIN)/python bench/ingest_vitals.py --samples 1000000
	$(BIN)/python bench/ingest_dicom.py --files 1000
	$(BIN)/python bench/ingest_vcf.py --variants 100000 --samples 10

# Each cleaning step on 1M observations, and Splink linkage of 100k patient records
bench-clean: env
	$(BIN)/python bench/clean_steps.py --rows 1000000
	$(BIN)/python bench/linkage.py --records 100000

lint: env
	$(BIN)/ruff check medlake jobs governance expectations training dags tests bench
	$(BIN)/mypy medlake jobs/pipeline.py jobs/ingest expectations/gate.py jobs/gold.py

clean:
	rm -rf .medlake $(DEMO_DIR)
