# Sourced by smoke_repro.sh and exp_demo.sh: `scratch_repo DIR` copies this checkout's tracked
# files into DIR (the working tree, dvc.lock and artifacts/ stay untouched), links the pulled
# inputs read-only, switches DIR to the `smoke` profile and commits it there as a fresh git
# repository; then it cds into DIR with this checkout's venv first on PATH.
scratch_repo() {
  local root=$PWD work=$1
  git ls-files -z | xargs -0 -I{} cp --parents {} "$work/"
  ln -s "$root/data" "$work/data"
  ln -s "$root/unseen_sources" "$work/unseen_sources"
  cd "$work"
  sed -i 's/^profile: .*/profile: smoke/' params.yaml
  git init -q && git add -A && git -c user.name=scratch -c user.email=scratch@localhost commit -qm "smoke profile"
  export PATH="$root/.venv/bin:$PATH"
}
