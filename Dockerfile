# syntax=docker/dockerfile:1
# Builder: pg_query_go is C (cgo), so the builder needs a C toolchain.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=1 go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/tenantguard ./cmd/tenantguard

# Runtime: glibc (cgo) without a shell or package manager, as a non-root user.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/tenantguard /usr/local/bin/tenantguard
COPY testdata/policy/clinic.yaml /etc/tenantguard/policy.yaml
USER nonroot:nonroot
EXPOSE 6432 9187
ENV TENANTGUARD_LISTEN=0.0.0.0:6432 \
    TENANTGUARD_ADMIN=0.0.0.0:9187 \
    TENANTGUARD_POLICY=/etc/tenantguard/policy.yaml
ENTRYPOINT ["tenantguard"]
CMD ["serve"]
