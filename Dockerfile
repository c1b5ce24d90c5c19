# One image holding every binary of the workspace; compose.yaml picks the command.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
 && mkdir /out \
 && cp target/release/users target/release/products target/release/orders \
       target/release/purchases-sync target/release/purchases-async target/release/monolith \
       target/release/lab /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 lab && mkdir /data && chown lab /data
COPY --from=build /out/ /usr/local/bin/
USER lab
WORKDIR /data
