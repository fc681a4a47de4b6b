# Two commands do all the set-up on a fresh machine with python3:
#   make book   create .venv, install the course environment, execute every notebook, build _build/html
#   make test   the same venv plus the test tools, then every test (unit, property, PyTorch, doctest, nbval)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
# Sources whose change means the editable install (and its compiled kernel) must be rebuilt.
PKG_SOURCES := pyproject.toml setup.py pooling_lib/_kernels.pyx pooling_lib/_kernels_avx2.pyx pooling_lib/_buffers.pyx

.PHONY: all book test venv bench homework clean distclean

all: test book

$(PY):
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.book-deps: $(PY) requirements.txt $(PKG_SOURCES)
	@$(PY) -m pip --version >/dev/null || { echo "$(VENV) is broken (no pip): run make distclean, then make again"; exit 1; }
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-deps: $(VENV)/.book-deps requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.test-deps

book: $(VENV)/.book-deps
	$(BIN)/jupyter-book build . -W -n --keep-going

test: $(VENV)/.test-deps
	$(PY) -m pytest tests pooling_lib --doctest-modules -n 2
	@notebooks="$$($(PY) tests/toc_notebooks.py)" || exit 1; \
	if [ -z "$$notebooks" ]; then echo "nbval: _toc.yml lists no notebook yet"; \
	else echo "nbval over:" $$notebooks; $(PY) -m pytest --nbval --nbval-current-env -n 2 --dist loadfile $$notebooks; fi

bench: $(VENV)/.test-deps
	$(PY) -m pooling_lib.bench

homework: $(VENV)/.book-deps
	$(PY) tools/make_homework.py

# clean also removes the install stamps: the compiled extension it deletes is rebuilt by the next make book/test
clean:
	rm -rf _build build dist pooling_lib.egg-info pooling_lib/_kernels.c pooling_lib/_kernels_avx2.c pooling_lib/_buffers.c pooling_lib/*.so pooling_lib/*.html
	rm -f $(VENV)/.book-deps $(VENV)/.test-deps

distclean: clean
	rm -rf $(VENV)
