# The payfleet binary: every stage, the CLI and the demo.
#   docker build -t payfleet .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p payfleet-workers --bin payfleet

FROM debian:bookworm-slim
RUN useradd --system --no-create-home payfleet
COPY --from=build /src/target/release/payfleet /usr/local/bin/payfleet
USER payfleet
EXPOSE 9464 9465
ENTRYPOINT ["payfleet"]
