# PyPI packages the tests need that Debian 12 does not ship, installed without their
# dependencies into build/pydeps (the Debian python3 at /usr/bin/python3 finds them through
# PYTHONPATH; never a PyPI torch). Source it; it defines came_pydeps.

CAME_ROOT="${CAME_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
CAME_BUILD="${CAME_BUILD:-$CAME_ROOT/build}"
CAME_PYDEPS="${CAME_PYDEPS:-$CAME_BUILD/pydeps}"

# Installs each "name==version" into $CAME_PYDEPS unless that exact version is there already
# (pip --no-deps: every dependency is listed explicitly by the caller or comes from Debian).
came_pydeps() {
  mkdir -p "$CAME_PYDEPS"
  # One installer at a time (ctest runs the tests that call this in parallel).
  (
    flock 9
    local missing=() spec name version dist
    for spec in "$@"; do
      name="${spec%%==*}"
      version="${spec#*==}"
      dist="$(echo "$name" | tr '-' '_')-$version.dist-info"
      if [ ! -d "$CAME_PYDEPS/$dist" ]; then missing+=("$spec"); fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi
    echo "pydeps: installing ${missing[*]} into $CAME_PYDEPS"
    # pip --target replaces a package's files but leaves another version's metadata behind.
    for spec in "${missing[@]}"; do
      rm -rf "$CAME_PYDEPS/$(echo "${spec%%==*}" | tr '-' '_')"-*.dist-info
    done
    /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-deps \
      --target "$CAME_PYDEPS" --upgrade "${missing[@]}"
  ) 9>"$CAME_PYDEPS/.lock"
}
