# The two quick-start commands (see README): `make demo` and `make test`.
.PHONY: demo test

demo:
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/pip install -q -e '.[all]'
	.venv/bin/faceops demo

test:
	bash scripts/setup-dev.sh
	.venv/bin/python -m pytest tests -q -rs
