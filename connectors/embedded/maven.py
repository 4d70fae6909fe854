"""JVM parts from Maven Central, fetched by ``mvn`` from the project's pom, cached.

``flink-conf/maven/pom.xml`` lists each set of jars as a Maven profile (``kafka-broker``: Apache
Kafka and its log4j2 binding). :func:`jars` copies a profile's runtime dependencies into
``$STREAMSCORE_CACHE/maven/<profile>-<pom hash>/`` once (``mvn dependency:copy-dependencies``),
and returns that folder; a changed pom gets a new folder. Concurrent callers (test sessions,
helpers) wait for each other on a lock file instead of downloading twice.

:func:`built_jar` builds a small Maven project of the repository (``mvn package``; e.g.
``flink-conf/maven/kafka-records``, the exactly-once sink's record serializer) into
``$STREAMSCORE_CACHE/maven/<project>-<hash of its pom and sources>/`` the same way: built once,
never committed as a binary.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

POM = Path(__file__).resolve().parents[2] / "flink-conf" / "maven" / "pom.xml"
_DONE = ".complete"


class MavenError(RuntimeError):
    """The jars could not be fetched (no ``mvn``, no network, a bad pom)."""


def cache_root() -> Path:
    """``$STREAMSCORE_CACHE/maven`` (default ``~/.cache/streamscore/maven``)."""
    base = os.environ.get("STREAMSCORE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamscore"
    return Path(base) / "maven"


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:12]


def _folder(profile: str, pom: Path) -> Path:
    return cache_root() / f"{profile}-{_pom_digest(pom)}"


def jars_cached(profile: str, pom: Path = POM) -> bool:
    """Whether ``profile``'s jars are in the cache already (no ``mvn`` needed)."""
    return (_folder(profile, pom) / _DONE).exists()


def jars(profile: str, pom: Path = POM, timeout_s: float = 900) -> Path:
    """The folder holding every runtime jar of ``profile`` (fetched by ``mvn`` the first time)."""
    return _cached(profile, _pom_digest(pom), lambda mvn, partial: [
        mvn, "-q", "-B", "-f", str(pom), "-P", profile, "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}"], f"they come from Maven Central as listed in {pom}", timeout_s)


def built_jar(project: Path, timeout_s: float = 900) -> Path:
    """The jar ``mvn package`` builds from the Maven project in folder ``project`` (built the
    first time, and again whenever its pom or a source file changes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in project.rglob("*") if p.is_file() and "target" not in p.parts):
        digest.update(str(path.relative_to(project)).encode() + b"\0" + path.read_bytes())
    folder = _cached(project.name, digest.hexdigest()[:12], lambda mvn, partial: [
        mvn, "-q", "-B", "-f", str(project / "pom.xml"), "package", f"-Dstreamscore.build.dir={partial}"],
        f"it is built from {project}", timeout_s)
    found = sorted(folder.glob("*.jar"))
    if len(found) != 1:
        raise MavenError(f"expected one jar in {folder}, found {[p.name for p in found]}")
    return found[0]


def _cached(name: str, digest: str, command, why: str, timeout_s: float) -> Path:
    """Run ``command(mvn, partial_folder)`` once per ``name``/``digest`` and keep its output folder."""
    folder = cache_root() / f"{name}-{digest}"
    if (folder / _DONE).exists():
        return folder
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenError(f"the {name!r} jars need Maven (`mvn`, e.g. apt-get install maven); {why}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # another process may be fetching the same jars
        if (folder / _DONE).exists():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = command(mvn, partial)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise MavenError(f"`{' '.join(cmd)}` did not finish within {timeout_s:.0f}s") from exc
        if done.returncode != 0 or not any(partial.glob("*.jar")):
            raise MavenError(f"`{' '.join(cmd)}` failed (exit {done.returncode}):\n"
                             f"{(done.stdout + done.stderr)[-3000:]}")
        (partial / _DONE).write_text(" ".join(cmd) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def classpath(profile: str) -> str:
    """A JVM ``-cp`` value holding every jar of ``profile``."""
    return str(jars(profile) / "*")


if __name__ == "__main__":          # python -m connectors.embedded.maven kafka-broker [kafka-records ...]
    import sys
    for name in sys.argv[1:] or ["kafka-broker"]:
        project = POM.parent / name     # a Maven project folder next to the pom: build it
        print(built_jar(project) if (project / "pom.xml").exists() else jars(name))
