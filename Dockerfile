# syntax=docker/dockerfile:1
#
# Tollgate agent image: one static-ish binary (glibc only) on a distroless base.
#
#   docker build -t tollgate:0.1.0 .
#
# The build needs what `cargo xtask setup` installs: a nightly toolchain with
# rust-src (the eBPF crate is built with -Z build-std=core) and bpf-linker built
# against the nightly's own LLVM. The builder stage runs exactly that, so the
# image is built the way a developer machine is. Run the image as described in
# docs/deploy.md (host network, the BPF capabilities, bpffs mounted).

# ---- builder ----------------------------------------------------------------
# Debian bookworm, so the binary's glibc matches the runtime image below.
ARG RUST_IMAGE=rust:1-bookworm
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# Nightly, rust-src and bpf-linker (the bpffs step only reports a skip here:
# there is no bpffs in a build container, and the build does not need one).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo xtask setup
# The eBPF object is compiled by userspace/tollgate/build.rs and embedded in
# the binary: one file to ship. target/ is a cache mount, so copy the result out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tollgate \
    && install -D -m 0755 target/release/tollgate /out/tollgate

# ---- runtime ----------------------------------------------------------------
# distroless/cc: glibc and libgcc_s (all the binary links), no shell, no
# package manager. Root is required: the agent refuses to start otherwise and
# gets its powers from the capabilities the runtime grants (see
# deploy/kubernetes/daemonset.yaml), not from a privileged container.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=builder /out/tollgate /usr/local/bin/tollgate
USER 0:0
# The policy is not baked in: mount it at /etc/tollgate/policy.yaml (a
# ConfigMap on Kubernetes, -v /etc/tollgate:/etc/tollgate:ro with docker).
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["agent", "--config", "/etc/tollgate/policy.yaml"]
