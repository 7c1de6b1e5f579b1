# godwit: a static binary on a distroless base, run as a non-root user.
#
#   docker build -t godwit .
#   docker run -d --name godwit --stop-timeout 60 \
#     -p 80:80 -p 443:443 -p 443:443/udp \
#     -v /etc/godwit:/etc/godwit:ro godwit
#
# Both base images are pinned by tag and by the digest of their
# multi-platform index, so a rebuild uses the same bytes. The digests are
# those public Dockerfiles pin for these tags, not fetched from the
# registries here (no container engine in this project's CI, which does
# not build this file): check and renew them with
# `docker buildx imagetools inspect golang:1.26.8` (and the same for the
# distroless image). README, "Deployment".

# The builder is exactly the Go of go.mod's `go 1.26.8`: the official image
# sets GOTOOLCHAIN=local, so an older one would refuse to build.
FROM golang:1.26.8@sha256:0f063af2d465d8dcae54cce04278ada488b96f77b42449c8d071e47d016cc65a AS build
WORKDIR /src
# Modules first, in their own layer: a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/godwit ./cmd/godwit

# static-debian12: CA certificates (for the Machines API driver) and
# tzdata, no shell, no package manager; "nonroot" is uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /out/godwit /usr/local/bin/godwit
USER 65532:65532
# Client ports (http, https, HTTP/3), gossip (TCP and UDP), the backhaul
# and the admin API, as in examples/multi-host. A non-root process may bind
# ports below 1024 in a container: Docker sets
# net.ipv4.ip_unprivileged_port_start=0 in the container's network namespace.
EXPOSE 80/tcp 443/tcp 443/udp 7946/tcp 7946/udp 4433/tcp 9090/tcp
# SIGTERM (Docker's default stop signal) drains; give it more than
# proxy.drain_timeout with `docker run --stop-timeout` or compose's
# stop_grace_period. SIGHUP (`docker kill -s HUP`) reloads the config.
ENTRYPOINT ["/usr/local/bin/godwit", "run", "--config", "/etc/godwit/godwit.toml"]
