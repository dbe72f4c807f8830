package main

import (
	"strings"
	"testing"
)

// showOutput is apt-cache show's output for a sample of the archive's
// kernel packages (abridged, the fields chooseKernel reads).
const showOutput = `Package: linux-image-5.10.0-46-amd64
Source: linux-signed-amd64 (5.10.262+1)
Version: 5.10.262-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 5.10 for 64-bit PCs (signed)
 The Linux kernel 5.10 and modules for use on PCs with AMD64, Intel 64 or
 VIA Nano processors.

Package: linux-image-6.1.0-57-amd64-unsigned
Version: 6.1.192-3
Depends: kmod, linux-base (>= 4.3~)

Package: linux-image-6.1.0-0.deb11.52-amd64
Version: 6.1.170-1~deb11u1
Depends: kmod

Package: linux-image-6.12.118+deb13-amd64
Version: 6.12.118-1
Depends: kmod

Package: linux-image-6.12.118+deb13-amd64-unsigned
Version: 6.12.118-1
Depends: kmod

Package: linux-image-6.12.117+deb13-amd64
Version: 6.12.117-1
Depends: kmod

Package: linux-image-6.12.115+deb12-amd64
Version: 6.12.115-1~deb12u1
Depends: kmod

Package: linux-image-6.12.115+deb13.1-amd64
Version: 6.12.115-1+deb13u1
Depends: kmod

Package: linux-image-6.18.15+deb13-amd64
Version: 6.18.15-1~bpo13+1
Depends: kmod, linux-base-6.18.15+deb13-amd64 (= 6.18.15-1~bpo13+1)

Package: linux-image-6.18.9+deb13-amd64
Version: 6.18.9-1~bpo13+1
Depends: kmod

Package: linux-image-7.1.13+deb13-amd64
Version: 7.1.13-1~bpo13+1
Depends: linux-base-7.1.13+deb13-amd64 (= 7.1.13-1~bpo13+1), linux-binary-7.1.13+deb13-amd64 (= 7.1.13-1~bpo13+1), linux-modules-7.1.13+deb13-amd64 (= 7.1.13-1~bpo13+1)

Package: linux-binary-7.1.13+deb13-amd64
Version: 7.1.13-1~bpo13+1

Package: linux-image-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)

Package: linux-binary-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1

Package: linux-modules-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1

Package: linux-base-7.3.4+deb13-amd64
Version: 7.3.4-1~bpo13+1

Package: linux-image-7.2.13+deb14-amd64
Version: 7.2.13-1
Depends: linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1)

Package: linux-binary-7.2.13+deb14-amd64
Version: 7.2.13-1
`

func TestChooseKernel(t *testing.T) {
	pkgs := map[string]debPackage{}
	for _, s := range parseStanzas(showOutput) {
		pkgs[s["Package"]] = debPackage{name: s["Package"], version: s["Version"], depends: s["Depends"]}
	}
	cases := []struct {
		spec      string
		debs      string // the packages to download, space-separated
		noModules bool
		err       string
	}{
		{spec: "5.10", debs: "linux-image-5.10.0-46-amd64"},
		// 6.1 is not a prefix of 6.12: versions compare by number.
		{spec: "6.1", debs: "linux-image-6.1.0-57-amd64-unsigned"},
		// The signed image, where both exist.
		{spec: "6.12", debs: "linux-image-6.12.118+deb13-amd64"},
		{spec: "6.12.117", debs: "linux-image-6.12.117+deb13-amd64"},
		// One release built twice: dpkg's order, in which ~ sorts first.
		{spec: "6.12.115", debs: "linux-image-6.12.115+deb13.1-amd64"},
		{spec: "6.18", debs: "linux-image-6.18.15+deb13-amd64"},
		// From 6.19 on an image is split into binary, modules and base.
		{spec: "7", debs: "linux-binary-7.3.4+deb13-amd64 linux-modules-7.3.4+deb13-amd64 linux-base-7.3.4+deb13-amd64"},
		{spec: "7.2", debs: "linux-binary-7.2.13+deb14-amd64", noModules: true},
		{spec: "7.1", debs: "linux-binary-7.1.13+deb13-amd64", noModules: true},
		{spec: "6.5", err: "no Debian kernel 6.5 for amd64; there are 5.10, 6.1, 6.12, 6.18, 7.1, 7.2, 7.3"},
		{spec: "6.x", err: "want a version such as"},
	}
	for _, c := range cases {
		t.Run(c.spec, func(t *testing.T) {
			got, err := chooseKernel(c.spec, "amd64", pkgs, dpkgNewer)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, d := range got.debs {
				names = append(names, d.name)
			}
			if strings.Join(names, " ") != c.debs || got.noModules != c.noModules {
				t.Errorf("download %q (no modules: %v), want %q (%v)", names, got.noModules, c.debs, c.noModules)
			}
		})
	}
}
