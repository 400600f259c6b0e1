"""Build-stage steps of the Containerfile (run by Debian's python3 inside it).

    headers SRC FLAVOUR DEST BPF   Debian's linux-headers (unpacked in SRC) merged
                                   into one tree and pruned to the files clang opens
                                   compiling every probe in BPF (traced with strace)
    headers-check DEST BPF         every probe still compiles against DEST
    stubs                          libz3 and ICU's data library as stubs (below)
    prune VENV                     remove what orb8 never uses (listed below, measured
                                   in docs/deploying.md#the-image)
    bytecode VENV                  byte-compile only the modules orb8 imports
    zip VENV                       pure-Python packages into zip archives on sys.path
    sbom VENV OUT VERSION REVISION SPDX 2.3 JSON: Debian packages + Python distributions

Everything here runs at build time only; nothing of it is imported by orb8.
"""

from __future__ import annotations

import ast
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Every probe variant the sources can compile (their -D switches that change
# which code, and so which headers, clang sees).
VARIANTS = ([], ["-DTCP_SOCK_OPS=1", "-DABI_STATUS_OFFSET=8", "-DABI_COMPAT_FLAG=2"])
CLANG_ERROR = re.compile(r": (fatal )?error: ")


def compile_probes(headers: Path, bpf: Path) -> None:
    """Compile every probe against `headers` (BCC_KERNEL_SOURCE). Loading needs
    CAP_BPF, which a build has not, so a load error after compiling is expected;
    clang's own errors are what headers-check looks for on stderr."""
    os.environ["BCC_KERNEL_SOURCE"] = str(headers)
    import bcc

    for source in sorted(bpf.glob("*.c")):
        for defines in VARIANTS:
            cflags = [f"-I{bpf / 'include'}", *defines]
            try:
                bcc.BPF(src_file=str(source).encode(), cflags=cflags).cleanup()
            except Exception as e:
                print(f"{source.name} {defines}: {e}", file=sys.stderr)


def traced_compile(headers: Path, bpf: Path) -> tuple[set[Path], str]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "trace"
        run = subprocess.run(
            [
                *("strace", "-f", "-qq", "-e", "trace=openat,chdir", "-e", "status=successful"),
                *("-o", str(log), sys.executable, __file__, "compile", str(headers), str(bpf)),
            ],
            capture_output=True,
            text=True,
        )
        opened = set()
        cwd: dict[str, Path] = {}
        for line in log.read_text().splitlines():
            pid = line.split(maxsplit=1)[0]
            if m := re.search(r'chdir\("([^"]+)"\)', line):
                cwd[pid] = (cwd.get(pid, Path("/")) / m.group(1)).resolve()
            elif m := re.search(r'openat\(AT_FDCWD, "([^"]+)"', line):
                opened.add((cwd.get(pid, Path("/")) / m.group(1)).resolve())
    return opened, run.stderr


def headers(src: Path, flavour: str, dest: Path, bpf: Path) -> None:
    full = dest.with_name(dest.name + ".full")
    # Links into linux-kbuild (scripts/, tools/: not unpacked, not needed) dangle.
    for tree in (src / (flavour.rsplit("-", 1)[0] + "-common"), src / flavour):
        shutil.copytree(tree, full, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    opened, stderr = traced_compile(full, bpf)
    if CLANG_ERROR.search(stderr):
        sys.exit(f"probes do not compile against {flavour}:\n{stderr}")
    root = full.resolve()
    kept = sorted(p for p in opened if p.is_relative_to(root) and p.is_file())
    for path in kept:
        target = dest / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (dest / "VERSION").write_text(flavour.removeprefix("linux-headers-") + "\n")
    shutil.rmtree(full)
    print(f"headers: kept {len(kept)} files of {flavour}", file=sys.stderr)


def headers_check(dest: Path, bpf: Path) -> None:
    run = subprocess.run(
        [sys.executable, __file__, "compile", str(dest), str(bpf)], capture_output=True, text=True
    )
    if CLANG_ERROR.search(run.stderr):
        sys.exit(f"probes do not compile against the pruned headers:\n{run.stderr}")


# Never imported by orb8: kubernetes' asyncio client (a second copy of every
# API and model, 65 MB) and its HTTP stack; pip and setuptools (install only).
UNUSED_DISTRIBUTIONS = [
    "aiohttp",
    "aiohttp-retry",
    "aiohappyeyeballs",
    "aiosignal",
    "attrs",
    "frozenlist",
    "multidict",
    "propcache",
    "yarl",
]
# numpy imports these only when they are used (numpy.__getattr__), and
# orb8 never uses them (numpy.ma it does: numpy.lib.recfunctions needs it).
UNUSED_PATHS = [
    "kubernetes/aio",
    "numpy/f2py",
    "numpy/_pyinstaller",
    "numpy/testing",
    "numpy/typing",
    "numpy/doc",
    "numpy/random",
    "numpy/fft",
    "numpy/polynomial",
    "numpy/_core/_simd*",
    "numpy/_core/_*_tests*",
]
# Debian packages nothing at run time needs: the build tools (gcc, strace),
# the package manager and what only it uses (apt, gnutls, gpgv, systemd's
# library), perl and what only perl scripts use, logins and PAM, util-linux,
# tar and diffutils (orb8 unpacks kheaders itself), ensurepip's wheels.
# Essential ones are purged on purpose: this is a runtime image (dpkg then
# lacks tar and diff, so this is its last job).
RUNTIME_PACKAGES = Path("/var/lib/orb8-runtime-packages")  # written before the build tools
UNUSED_PACKAGES = [
    "python3-venv",
    "python3.11-venv",
    "python3-pip-whl",
    "python3-setuptools-whl",
    "python3-distutils",
    "python3-lib2to3",
    "apt",
    "libapt-pkg6.0",
    "gpgv",
    "debian-archive-keyring",
    "libgnutls30",
    "libp11-kit0",
    "libtasn1-6",
    "libidn2-0",
    "libunistring2",
    "libnettle8",
    "libhogweed6",
    "libgcrypt20",
    "libgpg-error0",
    "libseccomp2",
    "libxxhash0",
    "libsystemd0",
    "libudev1",
    "usrmerge",
    "libfile-find-rule-perl",
    "libnumber-compare-perl",
    "libtext-glob-perl",
    "perl",
    "libperl5.36",
    "perl-modules-5.36",
    "libgdbm-compat4",
    "adduser",
    "debconf",
    "libdebconfclient0",
    "passwd",
    "login",
    "libsemanage2",
    "libsemanage-common",
    "libsepol2",
    "libaudit1",
    "libaudit-common",
    "libcap-ng0",
    "libpam-modules",
    "libpam-modules-bin",
    "libpam-runtime",
    "libpam0g",
    "libdb5.3",
    "openssl",
    "util-linux-extra",
    "util-linux",
    "perl-base",
    "tar",
    "diffutils",
]
STDLIB_UNUSED = ["test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data"]


def prune(venv: Path) -> None:
    site = next(venv.glob("lib/python3*/site-packages"))
    pip = [str(venv / "bin/python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "uninstall", "-y", *UNUSED_DISTRIBUTIONS], check=True)
    for pattern in UNUSED_PATHS:
        for path in site.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for tests in [*site.rglob("tests"), *site.rglob("*.pyi")]:
        if tests.is_dir():
            shutil.rmtree(tests)
        elif tests.exists():
            tests.unlink()
    subprocess.run([*pip, "uninstall", "-y", "pip", "setuptools"], check=True)
    # The build tools and everything they pulled in: what was not installed
    # before them (Containerfile).
    runtime = set(RUNTIME_PACKAGES.read_text().split())
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package}\n"], capture_output=True, text=True, check=True
    ).stdout.split()
    force = ["--force-depends", "--force-remove-essential", "--force-remove-protected"]
    purge = [p for p in installed if p not in runtime] + [
        p for p in UNUSED_PACKAGES if p in installed
    ]
    run = subprocess.run(["dpkg", "--purge", *force, *purge], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"dpkg --purge failed:\n{run.stdout}{run.stderr}")
    stdlib = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    for name in STDLIB_UNUSED:
        shutil.rmtree(stdlib / name, ignore_errors=True)
    # Documentation, manuals, translations, apt's caches. Copyright files stay.
    for doc in Path("/usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            shutil.rmtree(doc) if doc.is_dir() and not doc.is_symlink() else doc.unlink()
    # glibc's iconv modules: nothing here converts to legacy charsets.
    shutil.rmtree(MULTIARCH / "gconv", ignore_errors=True)
    RUNTIME_PACKAGES.unlink()
    for tree in ("/usr/share/man", "/usr/share/info", "/usr/share/locale", "/usr/share/lintian"):
        shutil.rmtree(tree, ignore_errors=True)
    for pattern in ("/var/lib/apt/lists/*", "/var/cache/apt/*", "/var/cache/debconf/*-old"):
        for path in Path("/").glob(pattern.lstrip("/")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for log in Path("/var/log").rglob("*"):
        if log.is_file():
            log.unlink()


def imported_by_orb8(venv: Path) -> set[str]:
    """Every module orb8 imports anywhere (including inside functions), imported
    for real in the venv, with everything those pull in: their source files."""
    package = next(venv.glob("lib/python3*/site-packages/exporter"))
    names = {"exporter"}
    for source in package.rglob("*.py"):
        module = ".".join(source.relative_to(package.parent).with_suffix("").parts)
        names.add(module.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
    # exporter.top.app is `orb8 top`'s live view: its textual/rich come with
    # the `top` extra, which the image does not install (`orb8 top --once`
    # and --json need neither), so it and they are not imported here.
    optional = {"exporter.top.app", "textual", "rich"}
    names = {n for n in names if n not in optional and n.split(".")[0] not in optional}
    probe = (
        "import importlib, json, sys\n"
        "for name in sorted(json.loads(sys.argv[1])):\n"
        "    importlib.import_module(name)\n"
        "from kubernetes import client, config, watch\n"
        "client.CoreV1Api\n"
        "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values())\n"
        "    if getattr(m, '__file__', None) and m.__file__.endswith('.py')})))\n"
    )
    run = subprocess.run(
        [str(venv / "bin/python"), "-c", probe, json.dumps(sorted(names))],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return set(json.loads(run.stdout))


def bytecode(venv: Path) -> None:
    """Python compiles a module without .pyc at every start (the root filesystem
    is read-only, so it cannot cache): compile what orb8 imports, nothing else.
    Unchecked-hash .pyc files do not depend on file times (reproducible)."""
    for root in (Path(sys.base_prefix) / "lib", venv):
        for cache in list(root.rglob("__pycache__")):
            shutil.rmtree(cache)
    files = imported_by_orb8(venv)
    for file in files:
        py_compile.compile(
            file, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH, doraise=True
        )
    print(f"bytecode: {len(files)} modules compiled", file=sys.stderr)


MULTIARCH = Path("/usr/lib") / str(__import__("sysconfig").get_config_var("MULTIARCH"))
STUBS = Path("/usr/share/doc/orb8/stubs.json")
# An empty ICU common-data package (what ICU's own stubdata library holds):
# ICU then finds no conversion tables, which nothing here asks for.
ICU_STUB = """
#include <stdint.h>
__attribute__((visibility("default"))) const struct {
    uint16_t headerSize; uint8_t magic1, magic2;
    struct { uint16_t size, reserved; uint8_t bigEndian, charset, sizeofUChar, reserved2;
             uint8_t format[4], formatVersion[4], dataVersion[4]; } info;
    char padding[8]; uint32_t count, reserved; uint32_t toc[2];
} SYMBOL = {32, 0xda, 0x27, {20, 0, 0, 0, 2, 0, {0x54, 0x6f, 0x43, 0x50}, {1, 0, 0, 0}, {0}},
            {0}, 0, 0, {0, 0}};
"""


def nm(library: Path, *flags: str) -> list[str]:
    out = subprocess.run(
        ["nm", "-D", *flags, str(library)], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def build_stub(source: str, soname: str, replace: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stub.c").write_text(source)
        subprocess.run(
            [
                *("gcc", "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}"),
                *("-o", str(replace.resolve()), str(Path(tmp) / "stub.c")),
            ],
            check=True,
        )


def stubs() -> None:
    """libLLVM links libz3 (clang's static analyser solver, 23 MB) and, through
    libxml2, ICU (33 MB, 30 of them the data library): BCC uses neither, but
    libbcc is loaded with RTLD_NOW, so every symbol must resolve. The stubs
    define exactly the symbols asked for: Z3 functions that abort with a
    message if ever called, and an empty ICU data package."""
    llvm = next(MULTIARCH.glob("libLLVM-*.so.1"))
    z3_names = sorted(n for n in nm(llvm, "--undefined-only") if n.startswith("Z3_"))
    z3 = next(MULTIARCH.glob("libz3.so.[0-9]"))
    build_stub(
        "#include <stdio.h>\n#include <stdlib.h>\n"
        + "".join(
            f'void {n}(void) {{ fputs("orb8 image: {n} called, libz3 is a stub '
            f'(docs/deploying.md)\\n", stderr); abort(); }}\n'
            for n in z3_names
        ),
        z3.name,
        z3,
    )
    icudata = next(MULTIARCH.glob("libicudata.so.[0-9]*[0-9]"))
    (symbol,) = [n for n in nm(icudata, "--defined-only") if re.fullmatch(r"icudt\d+_dat", n)]
    build_stub(ICU_STUB.replace("SYMBOL", symbol), icudata.name, icudata)
    # The rest of ICU: libxml2 needs only libicuuc.
    for unused in ("libicui18n", "libicuio", "libicutest", "libicutu"):
        for path in MULTIARCH.glob(f"{unused}.so*"):
            path.unlink()
    STUBS.parent.mkdir(parents=True, exist_ok=True)
    STUBS.write_text(
        json.dumps(
            {
                "libz3-4": f"{z3.name} replaced by a stub of the {len(z3_names)} "
                "functions libLLVM names (each aborts)",
                "libicu72": f"{icudata.name} replaced by an empty ICU data package; "
                "libicui18n, libicuio, libicutest, libicutu removed",
            },
            indent=1,
        )
    )


def pure_python(path: Path) -> bool:
    """A module or regular package made only of Python source (no extensions,
    no data files read from disk)."""
    if path.is_file():
        return path.suffix == ".py"
    if not (path / "__init__.py").exists():
        return False  # a namespace package: zipimport does not join those
    return all(
        f.suffix in (".py", ".pyc") or f.name == "py.typed" for f in path.rglob("*") if f.is_file()
    )


def zip_modules(directory: Path, archive: Path, keep: set[str]) -> int:
    """Move every pure-Python top-level module and package of `directory`
    (but `keep`) into `archive`, with the bytecode already compiled beside
    each module (where zipimport looks for it). Returns the bytes moved."""
    import zipfile

    tag = sys.implementation.cache_tag
    moved = 0
    mode = "a" if archive.exists() else "w"
    with zipfile.ZipFile(archive, mode, zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for entry in sorted(directory.iterdir()):
            if entry.name in keep or entry.name.startswith("_") or not pure_python(entry):
                continue
            sources = [entry] if entry.is_file() else sorted(entry.rglob("*.py"))
            for source in sources:
                name = source.relative_to(directory).as_posix()
                z.write(source, name)
                moved += source.stat().st_size
                compiled = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
                if compiled.exists():
                    z.write(compiled, name + "c")
                    moved += compiled.stat().st_size
                    compiled.unlink()
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return moved


def zip_python(venv: Path) -> None:
    """Generated and rarely imported Python is most of the interpreter's and
    the venv's size (the kubernetes client alone: 30+ MB, of which orb8
    imports about 40 modules; it reads the pod watch as raw JSON). Python
    imports from a compressed archive just as well (zipimport): the standard
    library's packages go into python3XY.zip, which Python already has on
    sys.path before its lib directory; the venv's into one archive a .pth
    puts on sys.path. Stays on disk: single-file stdlib modules (how Python
    finds its prefix), encodings (needed before anything else), orb8 itself
    (BCC compiles its bpf/ from files)."""
    stdlib = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    stdlib_zip = stdlib.parent / f"python{sys.version_info.major}{sys.version_info.minor}.zip"
    packages = {p.name for p in stdlib.iterdir() if p.is_file()} | {"encodings", "site-packages"}
    moved = zip_modules(stdlib, stdlib_zip, keep=packages)
    site = next(venv.glob("lib/python3*/site-packages"))
    moved += zip_modules(site, site / "pure-python.zip", keep={"exporter"})
    # A .pth line is a path relative to site-packages, added to sys.path.
    (site / "orb8-pure-python.pth").write_text("pure-python.zip\n")
    print(f"zip: {moved >> 20} MiB of Python moved into archives", file=sys.stderr)


def dpkg_packages() -> list[dict[str, str]]:
    packages, entry = [], {}
    for line in [*Path("/var/lib/dpkg/status").read_text().splitlines(), ""]:
        if not line:
            if entry.get("Status", "").endswith(" installed"):
                packages.append(entry)
            entry = {}
        elif not line.startswith(" ") and ":" in line:
            key, _, value = line.partition(":")
            entry[key] = value.strip()
    return packages


def sbom(venv: Path, out: Path, version: str, revision: str) -> None:
    listing = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            # Only the venv's: Debian's (bcc) are in the dpkg list already.
            "import importlib.metadata as m, json, sys; print(json.dumps(sorted("
            "(d.metadata['Name'], d.version) for d in m.distributions() "
            "if str(d.locate_file('')).startswith(sys.prefix))))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    packages = [
        {
            "SPDXID": f"SPDXRef-deb-{p['Package']}",
            "name": p["Package"],
            "versionInfo": p["Version"],
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": (
                        f"pkg:deb/debian/{p['Package']}@{p['Version']}"
                        f"?arch={p['Architecture']}&distro=bookworm"
                    ),
                }
            ],
        }
        for p in dpkg_packages()
    ]
    stubbed = json.loads(STUBS.read_text()) if STUBS.exists() else {}
    for package in packages:
        if package["name"] in stubbed:
            package["comment"] = stubbed[package["name"]]
    headers = Path("/usr/lib/orb8/kernel-headers/VERSION")
    if headers.exists():
        name = "linux-headers-" + headers.read_text().strip()
        packages.append(
            {
                "SPDXID": "SPDXRef-kernel-headers",
                "name": name,
                "versionInfo": headers.read_text().strip(),
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "comment": "pruned to the files compiling orb8's probes opens; not installed",
            }
        )
    for name, dist_version in json.loads(listing.stdout):
        packages.append(
            {
                "SPDXID": "SPDXRef-pypi-" + re.sub(r"[^A-Za-z0-9.-]", "-", name),
                "name": name,
                "versionInfo": dist_version,
                "downloadLocation": "NOASSERTION",
                "externalRefs": [
                    {
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        # purl: PyPI names normalised (PEP 503)
                        "referenceLocator": "pkg:pypi/"
                        + re.sub(r"[-_.]+", "-", name).lower()
                        + f"@{dist_version}",
                    }
                ],
            }
        )
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"orb8-{version}",
        "documentNamespace": f"https://github.com/orb8/orb8/sbom/{version}-{revision}",
        "creationInfo": {
            # The commit identifies the build; no wall-clock time (reproducible).
            "created": "1970-01-01T00:00:00Z",
            "creators": ["Tool: orb8 scripts/slim-image.py"],
            "comment": f"orb8 {version}, revision {revision}",
        },
        "packages": sorted(packages, key=lambda p: p["SPDXID"]),
        "relationships": [
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": p["SPDXID"],
            }
            for p in sorted(packages, key=lambda p: p["SPDXID"])
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n")


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "compile":
        compile_probes(Path(args[0]), Path(args[1]))
    elif command == "headers":
        headers(Path(args[0]), args[1], Path(args[2]), Path(args[3]))
    elif command == "headers-check":
        headers_check(Path(args[0]), Path(args[1]))
    elif command == "stubs":
        stubs()
    elif command == "zip":
        zip_python(Path(args[0]))
    elif command == "prune":
        prune(Path(args[0]))
    elif command == "bytecode":
        bytecode(Path(args[0]))
    elif command == "sbom":
        sbom(Path(args[0]), Path(args[1]), args[2], args[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
