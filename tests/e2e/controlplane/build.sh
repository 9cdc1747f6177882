#!/usr/bin/env bash
# Build the real kube-apiserver and etcd that the end-to-end tests run on loopback, the
# kube-controller-manager, kube-scheduler and kwok (fake nodes) that the controller tests
# add to them, the kustomize they render deploy/ with, and the helm that lints, renders
# and installs deploy/helm/energetiscope.
#
# All come from the Go module proxy through the wrapper modules beside this script
# (go.mod here for Kubernetes, etcd/go.mod for etcd, kwok/go.mod for kwok,
# kustomize/go.mod for kustomize, helm/go.mod for helm),
# so a machine with Go and the module proxy needs nothing else. The versions are read
# from those go.mod files: bump them there (and run `go mod tidy`), not here.
#
# Binaries land in ${ENERGETISCOPE_CACHE:-$HOME/.cache/energetiscope}/bin with the
# version in their name, outside the clone so that every clone and every run reuses
# them; an existing binary is never rebuilt, which keeps a warm run instant.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_dir="${ENERGETISCOPE_CACHE:-$HOME/.cache/energetiscope}"
bin_dir="$cache_dir/bin"

# The version a wrapper module requires, read without starting the go command.
required_version() { # <go.mod> <module path>
    local version
    version="$(sed -nE "s#^[[:space:]]*(require[[:space:]]+)?$2[[:space:]]+(v[0-9][^[:space:]]*).*#\2#p" "$1" | head -n1)"
    if [[ -z "$version" ]]; then
        echo "build.sh: $1 does not require $2" >&2
        exit 1
    fi
    echo "$version"
}

kubernetes_version="$(required_version "$here/go.mod" k8s.io/kubernetes)"
etcd_version="$(required_version "$here/etcd/go.mod" go.etcd.io/etcd/server/v3)"
apiserver_bin="$bin_dir/kube-apiserver-$kubernetes_version"
controller_manager_bin="$bin_dir/kube-controller-manager-$kubernetes_version"
scheduler_bin="$bin_dir/kube-scheduler-$kubernetes_version"
etcd_bin="$bin_dir/etcd-$etcd_version"
kustomize_version="$(required_version "$here/kustomize/go.mod" sigs.k8s.io/kustomize/kustomize/v5)"
kustomize_bin="$bin_dir/kustomize-$kustomize_version"
helm_version="$(required_version "$here/helm/go.mod" helm.sh/helm/v3)"
helm_bin="$bin_dir/helm-$helm_version"
kwok_version="$(required_version "$here/kwok/go.mod" sigs.k8s.io/kwok)"
kwok_bin="$bin_dir/kwok-$kwok_version"

now() { date +%s.%N; }
elapsed() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.1fs", end - start }'; }

# Every staging module must be replaced by its release matching Kubernetes v1.X.Y,
# that is v0.X.Y; a stale replace would build a mismatched apiserver silently.
check_staging_replaces() {
    local staging_version="v0.${kubernetes_version#v1.}" stale
    stale="$(grep -E '^[[:space:]]*k8s\.io/[^[:space:]]+ => ' "$here/go.mod" | grep -vE "=> k8s\.io/[^[:space:]]+ $staging_version\$" || true)"
    if [[ -n "$stale" ]]; then
        echo "build.sh: these replaces in go.mod do not match $staging_version:" >&2
        echo "$stale" >&2
        exit 1
    fi
}

# Build <package> from <module dir> into <output>, through a temporary name in the
# same directory so an interrupted build never leaves a binary that looks complete.
build_binary() { # <module dir> <package> <output> <ldflags>
    local module_dir="$1" package="$2" output="$3" ldflags="$4"
    local tmp="$output.tmp.$$"
    local start
    start="$(now)"
    echo "build.sh: building $(basename "$output") from $package (cold builds take minutes)"
    trap "rm -f '$tmp'" EXIT
    (cd "$module_dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp" "$package")
    mv -f "$tmp" "$output"
    trap - EXIT
    echo "build.sh: built $output in $(elapsed "$start")"
}

main() {
    local start
    start="$(now)"
    mkdir -p "$bin_dir"

    # kube-apiserver, kube-controller-manager and kube-scheduler, each from the same
    # k8s.io/kubernetes module and each built only if its binary is missing.
    local minor="${kubernetes_version#v1.}"
    minor="${minor%%.*}"
    # The version package is what /version reports and what the apiserver compares its
    # emulation version against (and the controllers and scheduler theirs against the
    # apiserver's); a plain `go build` leaves it at v0.0.0.
    local version_pkg=k8s.io/component-base/version
    local kube_ldflags="-s -w -X $version_pkg.gitVersion=$kubernetes_version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    local command output
    for command in kube-apiserver kube-controller-manager kube-scheduler; do
        case "$command" in
            kube-apiserver) output="$apiserver_bin" ;;
            kube-controller-manager) output="$controller_manager_bin" ;;
            kube-scheduler) output="$scheduler_bin" ;;
        esac
        if [[ -x "$output" ]]; then
            echo "build.sh: $output exists, not rebuilding"
            continue
        fi
        command -v go >/dev/null || { echo "build.sh: the go command is needed to build $command" >&2; exit 1; }
        check_staging_replaces
        build_binary "$here" "k8s.io/kubernetes/cmd/$command" "$output" "$kube_ldflags"
    done

    if [[ -x "$etcd_bin" ]]; then
        echo "build.sh: $etcd_bin exists, not rebuilding"
    else
        command -v go >/dev/null || { echo "build.sh: the go command is needed to build etcd" >&2; exit 1; }
        # etcd's version is a constant in its api module, so no -X is needed.
        build_binary "$here/etcd" go.etcd.io/etcd/server/v3 "$etcd_bin" "-s -w"
    fi

    if [[ -x "$kwok_bin" ]]; then
        echo "build.sh: $kwok_bin exists, not rebuilding"
    else
        command -v go >/dev/null || { echo "build.sh: the go command is needed to build kwok" >&2; exit 1; }
        # `kwok --version` reports consts.Version, as kwok's own release script sets it.
        build_binary "$here/kwok" sigs.k8s.io/kwok/cmd/kwok "$kwok_bin" \
            "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version"
    fi

    if [[ -x "$kustomize_bin" ]]; then
        echo "build.sh: $kustomize_bin exists, not rebuilding"
    else
        command -v go >/dev/null || { echo "build.sh: the go command is needed to build kustomize" >&2; exit 1; }
        # kustomize reads its own version from the build info of its module, so no -X is needed.
        build_binary "$here/kustomize" sigs.k8s.io/kustomize/kustomize/v5 "$kustomize_bin" "-s -w"
    fi

    if [[ -x "$helm_bin" ]]; then
        echo "build.sh: $helm_bin exists, not rebuilding"
    else
        command -v go >/dev/null || { echo "build.sh: the go command is needed to build helm" >&2; exit 1; }
        # `helm version` reports internal/version.version, and `helm template`/`lint` assume
        # the Kubernetes release of the client-go helm is built with (v0.X.Y is 1.X), as
        # helm's own Makefile sets them; a plain `go build` leaves v1.20, which charts'
        # kubeVersion constraints reject.
        local client_go minor_k8s
        client_go="$(required_version "$here/helm/go.mod" k8s.io/client-go)"
        minor_k8s="$(echo "$client_go" | cut -d. -f2)"
        local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
        ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        local pkg
        for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
            ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor_k8s"
        done
        build_binary "$here/helm" helm.sh/helm/v3/cmd/helm "$helm_bin" "$ldflags"
    fi

    echo "build.sh: control plane binaries ready in $bin_dir ($(elapsed "$start"))"
}

main "$@"
