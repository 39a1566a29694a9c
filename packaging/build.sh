#!/usr/bin/env bash
# Build the sessioncap binary and its deb and rpm packages.
#
# Run from the repository root:  packaging/build.sh
#
# Output, for each architecture in ARCHES:
#   dist/sessioncap_VERSION_ARCH.deb         (ARCH: amd64, arm64)
#   dist/sessioncap-VERSION-1.RPMARCH.rpm    (RPMARCH: x86_64, aarch64)
#   dist/build/linux_ARCH/sessioncap         the binary inside them
#   dist/VERSION, dist/SHA256SUMS
#   dist/changelog.yml, dist/man/*.gz   what nfpm puts in both packages
#
# Environment:
#   VERSION   package and binary version. Default: from `git describe --tags`
#             on tags named vX.Y.Z: on a tag X.Y.Z (v1.2.3-rc1 gives 1.2.3~rc1,
#             which sorts before 1.2.3 in dpkg and rpm); N commits after it
#             X.Y.Z+gitN.gSHA; with no tag at all 0.0.0+gitN.gSHA.
#             A leading "v" is dropped.
#   ARCHES    architectures to build (default "amd64 arm64"; Go cross-compiles,
#             CGO is off).
#   SOURCE_DATE_EPOCH  file times inside the packages (default: the last
#             commit's time), so a rebuild of one commit gives the same files.
#
# nfpm is not a dependency of the module: it is installed from the Go module
# proxy at a pinned version into dist/.tools and never touches go.mod.
set -euo pipefail

NFPM_VERSION=v2.45.2

die() {
	echo "build.sh: $*" >&2
	exit 1
}

if ! [ -f go.mod ] || ! [ -d cmd/sessioncap ] || ! [ -f packaging/nfpm.yaml ]; then
	die "run me from the repository root (packaging/build.sh)"
fi

for f in packaging/sessioncap.toml packaging/sessioncap.service README.md LICENSE \
	packaging/man/sessioncap.8 packaging/man/sessioncap.toml.5; do
	[ -f "$f" ] || die "$f is missing: the packages ship it"
done

version_from_git() {
	local desc count sha
	if desc=$(git describe --tags --long --match 'v[0-9]*' 2>/dev/null); then
		# vX.Y.Z[-pre]-N-gSHA
		if [[ $desc =~ ^v(.+)-([0-9]+)-g([0-9a-f]+)$ ]]; then
			local base=${BASH_REMATCH[1]//-/\~}
			count=${BASH_REMATCH[2]}
			sha=${BASH_REMATCH[3]}
			if [ "$count" = 0 ]; then
				echo "$base"
			else
				echo "$base+git$count.g$sha"
			fi
			return
		fi
		die "cannot parse git describe output: $desc"
	fi
	count=$(git rev-list --count HEAD 2>/dev/null) ||
		die "no VERSION given and not in a git checkout: set VERSION=X.Y.Z"
	sha=$(git rev-parse --short=7 HEAD)
	echo "0.0.0+git$count.g$sha"
}

VERSION=${VERSION:-$(version_from_git)}
VERSION=${VERSION#v}
[[ $VERSION =~ ^[0-9][0-9A-Za-z.+~]*$ ]] ||
	die "VERSION '$VERSION' is not a package version (digits first; letters, digits, . + ~ only)"
export VERSION

ARCHES=${ARCHES:-amd64 arm64}
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

mkdir -p dist/.tools
NFPM=dist/.tools/nfpm-$NFPM_VERSION
if [ ! -x "$NFPM" ]; then
	echo "build.sh: installing nfpm $NFPM_VERSION"
	tmpbin=$(mktemp -d)
	GOWORK=off GOFLAGS='' CGO_ENABLED=0 GOBIN="$tmpbin" \
		go install "github.com/goreleaser/nfpm/v2/cmd/nfpm@$NFPM_VERSION"
	mv "$tmpbin/nfpm" "$NFPM"
	rmdir "$tmpbin"
fi

# Leave no package of another version behind (ci.sh installs dist/*.deb).
rm -f dist/sessioncap_*.deb dist/sessioncap-*.rpm dist/SHA256SUMS

# The package release is 1 (nfpm.yaml): the deb is VERSION-1, the rpm
# VERSION-1 too.
RELEASE=1
# Man pages, gzipped without a name or time in the header (reproducible).
mkdir -p dist/man
for page in packaging/man/sessioncap.8 packaging/man/sessioncap.toml.5; do
	gzip -9nc "$page" >"dist/man/${page##*/}.gz"
done
# One changelog entry for the version being packaged, dated by the commit:
# the deb's changelog.Debian.gz and the rpm's %changelog both come from it.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
cat >dist/changelog.yml <<CHANGELOG
- semver: "$VERSION-$RELEASE"
  date: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
  packager: sessioncap maintainers <sessioncap@users.noreply.github.com>
  deb:
    urgency: medium
    distributions: [unstable]
  changes:
    - note: "Built from upstream commit $commit."
CHANGELOG

for arch in $ARCHES; do
	case $arch in
	amd64) rpmarch=x86_64 ;;
	arm64) rpmarch=aarch64 ;;
	*) die "unsupported architecture $arch (amd64, arm64)" ;;
	esac
	out=dist/build/linux_$arch
	mkdir -p "$out"
	echo "build.sh: go build linux/$arch version $VERSION"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath \
		-ldflags "-s -w -X main.version=$VERSION" \
		-o "$out/sessioncap" ./cmd/sessioncap

	export GOARCH=$arch BINARY=$out/sessioncap
	"$NFPM" package --config packaging/nfpm.yaml --packager deb \
		--target "dist/sessioncap_${VERSION}_$arch.deb" >/dev/null
	"$NFPM" package --config packaging/nfpm.yaml --packager rpm \
		--target "dist/sessioncap-$VERSION-$RELEASE.$rpmarch.rpm" >/dev/null
done

echo "$VERSION" >dist/VERSION
(cd dist && sha256sum sessioncap_*.deb sessioncap-*.rpm >SHA256SUMS)
echo "build.sh: built version $VERSION:"
for f in dist/sessioncap_*.deb dist/sessioncap-*.rpm; do
	printf '  %-50s %9d bytes\n' "$f" "$(stat -c %s "$f")"
done
