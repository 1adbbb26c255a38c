# ferry's image: both binaries on Debian slim, running as the unprivileged user ferry (the
# scheduler); agents run it as root (`user: root` in docker-compose.yml) to keep owners.
#   docker build -t ferry .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ferry-scheduler -p ferry-agent --bins \
 && install -m 0755 target/release/ferry target/release/ferry-agent /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /var/lib/ferry --create-home \
        --shell /usr/sbin/nologin ferry \
 && install -d -o ferry -g ferry /data
COPY --from=build /usr/local/bin/ferry /usr/local/bin/ferry-agent /usr/local/bin/
USER ferry
WORKDIR /var/lib/ferry
# /data: the schedulers' local folders in docker-compose.yml; a new volume there takes its
# owner from this folder, so user ferry can write it.
# 9033: an agent's peers; 9034: --metrics-listen, by the convention of docker-compose.yml.
EXPOSE 9033 9034
ENTRYPOINT ["ferry"]
