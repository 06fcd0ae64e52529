# shellcheck shell=bash
# The software environments of one bundle instance; sourced by run_one.sh, whose `env_prepare`
# call builds what tasks/K.sh asks for (AV_CONDA / AV_PIP, named AV_CONDA_ENV / AV_PIP_ENV by
# domain/environments.py, which fills in the @...@) and leaves them for its script:
# `env_path` goes in front of its PATH, `env_active` (NAME=VALUE) on top of its variables.
#
# Each environment is built once per resource, as $AV_ENVS/NAME: under a lock (NAME.lock,
# flock from util-linux) so that concurrent instances and bundles wait for one build, and
# marked usable by NAME/@COMPLETE@, written last: one without it died half-way and is removed
# and built again. The build's log stays beside it (NAME.log) for whoever looks into a failure.
# Needs bash, coreutils and util-linux only; the tools are the resource's own.

env_path=
env_active=()
env_tool=
env_tools=(@CONDA_TOOLS@)

env_list() {  # env_list ITEM...: "a, b, c"
  local s
  printf -v s '%s, ' "$@"
  printf '%s' "${s%, }"
}

env_error() {  # env_error LOG: its last line naming an error, else its last line (one line)
  local line
  line=$(grep -i 'error' "$1" 2>/dev/null | tail -n 1)
  [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1)
  printf '%s' "${line:-no output}" | tr -d '\r\n' | cut -c1-300
}

env_build() {  # env_build NAME WHAT BUILDER: $AV_ENVS/NAME, built by `BUILDER DIR` if need be
  local dir="$AV_ENVS/$1" log="$AV_ENVS/$1.log" what=$2 builder=$3
  [ -e "$dir/@COMPLETE@" ] && return 0
  command -v flock >/dev/null || finish "error 74 $what: flock (util-linux) is not on PATH" 74
  mkdir -p "$AV_ENVS" || finish "error 74 $what: cannot create $AV_ENVS" 74
  if ! (
    flock 9 || exit 1
    [ -e "$dir/@COMPLETE@" ] && exit 0  # built by another instance while this one waited
    rm -rf "$dir"
    "$builder" "$dir" </dev/null >"$log" 2>&1 && : >"$dir/@COMPLETE@"
  ) 9>"$dir.lock"; then
    finish "error 74 $what failed to build: $(env_error "$log") (log: $log)" 74
  fi
}

env_conda_build() {  # env_conda_build DIR: a conda environment of AV_CONDA, by env_tool
  local extra=()
  case $env_tool in
    # @CONDA_CHANNELS@
  esac
  timeout @TIMEOUT@ "$env_tool" create -y -p "$1" "${extra[@]}" "${AV_CONDA[@]}"
}

env_pip_build() {  # env_pip_build DIR: a virtual environment with AV_PIP installed
  local python=@PYTHON@ site=()
  if [ -n "$AV_CONDA_ENV" ] && [ -x "$AV_ENVS/$AV_CONDA_ENV/bin/@PYTHON@" ]; then
    python="$AV_ENVS/$AV_CONDA_ENV/bin/@PYTHON@"
    site=(--system-site-packages)  # layered on the conda environment: it sees its packages
  fi
  command -v "$python" >/dev/null || { echo "error: no $python on PATH"; return 1; }
  timeout @TIMEOUT@ "$python" -m venv "${site[@]}" "$1" &&
    timeout @TIMEOUT@ "$1/bin/python" -m pip install --no-input --disable-pip-version-check \
      -- "${AV_PIP[@]}"
}

env_prepare() {  # conda first: a virtual environment may be layered on it
  local what t
  if [ ${#AV_CONDA[@]} -gt 0 ]; then
    what="conda environment [$(env_list "${AV_CONDA[@]}")]"
    if [ ! -e "$AV_ENVS/$AV_CONDA_ENV/@COMPLETE@" ]; then  # a built one needs no tool
      for t in "${env_tools[@]}"; do
        if command -v "$t" >/dev/null; then env_tool=$t; break; fi
      done
      [ -n "$env_tool" ] || finish "error 73 $what: @NO_CONDA_TOOL@" 73
    fi
    env_build "$AV_CONDA_ENV" "$what" env_conda_build
    env_path="$AV_ENVS/$AV_CONDA_ENV/bin:"
    env_active+=("CONDA_PREFIX=$AV_ENVS/$AV_CONDA_ENV")
  fi
  if [ ${#AV_PIP[@]} -gt 0 ]; then
    env_build "$AV_PIP_ENV" "pip environment [$(env_list "${AV_PIP[@]}")]" env_pip_build
    env_path="$AV_ENVS/$AV_PIP_ENV/bin:$env_path"
    env_active+=("VIRTUAL_ENV=$AV_ENVS/$AV_PIP_ENV")
  fi
}
