/*
 * nvme-hello: the C API in one program. Opens a controller, writes a
 * pattern with several requests in flight, reads it back (into DMA memory
 * and into registered memory) and compares; then a flush, write zeroes and
 * deallocate, and a read that must fail.
 *
 * Usage: nvme-hello ADDRESS [NSID]   (ADDRESS: 0000:01:00.0, or sim)
 * Exit status 0 when everything matched.
 *
 * Build: cc -O2 -Icrates/nvme-capi/include examples/c/nvme-hello.c \
 *            target/release/libnvmevfio.a -lpthread -ldl -lm -o nvme-hello
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvme_vfio.h"

#define CHUNK 16384u
#define CHUNKS 8u

static int fail(const char *what, int rc)
{
	fprintf(stderr, "nvme-hello: %s: %s (%s)\n", what, nvmev_strerror(rc),
		nvmev_last_error());
	return 1;
}

/* Waits for n completions; every one must have status `want`. */
static int reap(struct nvmev_qpair *qp, unsigned n, int want, uint64_t *tags)
{
	struct nvmev_completion c[16];
	unsigned got = 0;

	while (got < n) {
		int k = nvmev_qpair_wait(qp, c, 16, 5000);
		if (k < 0)
			return fail("wait", k);
		if (k == 0) {
			fprintf(stderr, "nvme-hello: no completion within 5 s\n");
			return 1;
		}
		for (int i = 0; i < k; i++) {
			if (c[i].status != want) {
				fprintf(stderr,
					"nvme-hello: request %" PRIu64 ": status %d (%s), NVMe status %#x: %s\n",
					c[i].tag, c[i].status, nvmev_strerror(c[i].status),
					c[i].nvme_status, nvmev_last_error());
				return 1;
			}
			if (tags)
				tags[got] = c[i].tag;
			got++;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct nvmev_ctrl *ctrl;
	struct nvmev_qpair *qp;
	struct nvmev_ns_info ns;
	uint32_t ids[8];
	uint64_t tags[CHUNKS];
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: nvme-hello ADDRESS [NSID]\n");
		return 2;
	}
	uint32_t nsid = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 0) : 1;
	printf("libnvmevfio %s\n", nvmev_version());

	rc = nvmev_ctrl_open(argv[1], NULL, &ctrl);
	if (rc)
		return fail(argv[1], rc);
	rc = nvmev_ctrl_namespaces(ctrl, ids, 8);
	if (rc < 1)
		return fail("namespaces", rc < 0 ? rc : -ENOENT);
	rc = nvmev_ns_info(ctrl, nsid, &ns);
	if (rc)
		return fail("namespace", rc);
	printf("%s: %d namespace(s); namespace %u: %" PRIu64 " blocks of %u bytes, "
	       "%u bytes per command at most\n",
	       argv[1], nvmev_ctrl_namespaces(ctrl, NULL, 0), nsid, ns.blocks,
	       ns.block_size, ns.max_transfer);
	if (ns.blocks * ns.block_size < CHUNK * CHUNKS) {
		fprintf(stderr, "nvme-hello: namespace too small\n");
		return 1;
	}
	rc = nvmev_qpair_create(ctrl, NULL, &qp);
	if (rc)
		return fail("queue pair", rc);

	/* Write CHUNKS chunks from DMA memory, all in flight at once. */
	uint8_t *out = nvmev_dma_alloc(ctrl, CHUNK * CHUNKS);
	uint8_t *in = nvmev_dma_alloc(ctrl, CHUNK * CHUNKS);
	if (!out || !in)
		return fail("DMA memory", -ENOMEM);
	for (unsigned i = 0; i < CHUNK * CHUNKS; i++)
		out[i] = (uint8_t)(i * 7 + i / 4096 + 1);
	uint64_t blocks = CHUNK / ns.block_size;
	for (unsigned i = 0; i < CHUNKS; i++) {
		rc = nvmev_write(qp, nsid, i * blocks, out + i * CHUNK, CHUNK, 100 + i);
		if (rc)
			return fail("write", rc);
	}
	nvmev_qpair_ring(qp);
	if (reap(qp, CHUNKS, 0, tags))
		return 1;
	uint64_t seen = 0;
	for (unsigned i = 0; i < CHUNKS; i++)
		seen |= 1ull << (tags[i] - 100);
	if (seen != (1ull << CHUNKS) - 1) {
		fprintf(stderr, "nvme-hello: completion tags do not match the writes\n");
		return 1;
	}

	/* Read back into DMA memory. */
	for (unsigned i = 0; i < CHUNKS; i++) {
		rc = nvmev_read(qp, nsid, i * blocks, in + i * CHUNK, CHUNK, 200 + i);
		if (rc)
			return fail("read", rc);
	}
	if (reap(qp, CHUNKS, 0, NULL))
		return 1;
	if (memcmp(in, out, CHUNK * CHUNKS)) {
		fprintf(stderr, "nvme-hello: read back (DMA memory) differs\n");
		return 1;
	}

	/* Read back into registered memory of the program's own. */
	uint8_t *mine = aligned_alloc(4096, CHUNK * CHUNKS);
	if (!mine)
		return 1;
	memset(mine, 0, CHUNK * CHUNKS);
	rc = nvmev_register(ctrl, mine, CHUNK * CHUNKS);
	if (rc)
		return fail("register", rc);
	rc = nvmev_read(qp, nsid, 0, mine, CHUNK * CHUNKS, 300);
	if (rc)
		return fail("read into registered memory", rc);
	if (reap(qp, 1, 0, NULL))
		return 1;
	if (memcmp(mine, out, CHUNK * CHUNKS)) {
		fprintf(stderr, "nvme-hello: read back (registered memory) differs\n");
		return 1;
	}
	rc = nvmev_unregister(ctrl, mine);
	if (rc)
		return fail("unregister", rc);

	/* Flush, write zeroes over the first chunk, read it back as zeroes. */
	rc = nvmev_flush(qp, nsid, 400);
	if (rc)
		return fail("flush", rc);
	rc = nvmev_write_zeroes(qp, nsid, 0, blocks, 401);
	if (rc)
		return fail("write zeroes", rc);
	if (reap(qp, 2, 0, NULL))
		return 1;
	rc = nvmev_read(qp, nsid, 0, in, CHUNK, 402);
	if (rc || reap(qp, 1, 0, NULL))
		return rc ? fail("read", rc) : 1;
	for (unsigned i = 0; i < CHUNK; i++)
		if (in[i]) {
			fprintf(stderr, "nvme-hello: byte %u not zero after write zeroes\n", i);
			return 1;
		}
	rc = nvmev_deallocate(qp, nsid, blocks, blocks, 403);
	if (rc && rc != -ENOTSUP)
		return fail("deallocate", rc);
	if (reap(qp, 1, rc, NULL))
		return 1;

	/* A read past the end is refused with a message. */
	rc = nvmev_read(qp, nsid, ns.blocks, in, ns.block_size, 500);
	if (rc != -EINVAL) {
		fprintf(stderr, "nvme-hello: a read past the end returned %d\n", rc);
		return 1;
	}
	printf("refused as expected: %s\n", nvmev_last_error());

	nvmev_dma_free(ctrl, out);
	nvmev_dma_free(ctrl, in);
	nvmev_qpair_destroy(qp);
	nvmev_ctrl_close(ctrl);
	free(mine);
	printf("nvme-hello: wrote, read back and compared %u bytes: OK\n", CHUNK * CHUNKS);
	return 0;
}
