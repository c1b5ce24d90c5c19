# syntax=docker/dockerfile:1
# One image holding every binary of the workspace; compose.yaml picks the command.
#
# The cargo registry and the target directory are BuildKit cache mounts: they outlive a build,
# so after a source edit cargo rebuilds only the crates that changed, not every dependency.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=lab-target,target=/src/target \
    cargo build --release --workspace --bins \
 && mkdir /out \
 && cp target/release/users target/release/products target/release/orders \
       target/release/purchases-sync target/release/purchases-bus target/release/purchases-async \
       target/release/monolith \
       target/release/lab /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 lab && mkdir /data && chown lab /data
COPY --from=build /out/ /usr/local/bin/
USER lab
WORKDIR /data
