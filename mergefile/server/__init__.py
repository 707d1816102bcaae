"""The resident build server: torch and mergebuild imported once, a fresh fork per build.

Every ``mergebuild`` process pays about three seconds before it can merge anything: Python
start-up, the planning imports and ``import torch``. On small models and one-layer edits that
fixed cost is most of the build. Bazel and Gradle answer the same problem with a daemon; this
one is a *zygote* (as Android's): a process that has imported everything a build needs and does
nothing else. Each request forks it; the child takes over the client's stdin/stdout/stderr
(passed as file descriptors), working directory, environment, umask and limits, runs the
ordinary CLI, and reports its exit status. The zygote itself never builds, so no state carries
from one build to the next, and a crash takes down one build, not the server.

``fingerprint`` says which server may serve a client (same interpreter, packages, mergebuild
code and import-time environment); ``server_dir`` where servers live; ``protocol`` the wire format;
``warm`` what the server imports and how its forks stay safe; ``zygote`` the server loop;
``child`` what a forked build does; ``client`` the console script's side. Details and the user-facing switches: docs/server.md.
"""
