/*
 * nvme_vfio.h: the C API of nvme-vfio, a userspace NVMe driver on VFIO.
 *
 * Link with -lnvmevfio (libnvmevfio.so, or libnvmevfio.a plus
 * -lpthread -ldl -lm). Build: cargo build --release -p nvme-capi; the
 * libraries are in target/release/.
 *
 * Conventions:
 * - Functions returning int return 0 (or a count) on success and a
 *   negative errno value on failure; nvmev_last_error() then says what
 *   happened, in the driver's words, for the calling thread.
 * - A controller (struct nvmev_ctrl) may be used from any thread. A queue
 *   pair (struct nvmev_qpair) is used by one thread at a time: one queue
 *   pair per thread, as the driver is lock-free per queue pair.
 * - A controller stays open until it has been closed and all its queue
 *   pairs are destroyed.
 * - Memory given to nvmev_read/nvmev_write must stay valid, and untouched
 *   (for a read) or unchanged (for a write), until its completion is
 *   returned by nvmev_qpair_poll/nvmev_qpair_wait or the queue pair is
 *   destroyed. DMA memory (nvmev_dma_alloc) and registered memory
 *   (nvmev_register) are used without any per-I/O mapping; other memory is
 *   mapped for each I/O (slower, but correct).
 * - A status of -ENOTRECOVERABLE (from a call or in a completion) means the
 *   controller is dead: it could not be stopped, so the device may still
 *   write the memory of that request and of every request that was in
 *   flight on the controller, even after nvmev_qpair_destroy: never free or
 *   reuse that memory (leak it).
 */
#ifndef NVME_VFIO_H
#define NVME_VFIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A controller (opaque). */
struct nvmev_ctrl;
/* A queue pair: one submission and one completion queue (opaque). */
struct nvmev_qpair;

/* Options of nvmev_ctrl_open; a zero field takes the default. */
struct nvmev_ctrl_opts {
	/* I/O queue pairs to ask the controller for (default 16). */
	uint16_t io_queues;
	/* 1: completions raise an interrupt (eventfd, nvmev_qpair_fd);
	 * 0: polled (default). */
	uint8_t interrupts;
	/* 1: do not use 2 MiB hugepages for DMA memory (default: use them
	 * when the system has some). */
	uint8_t no_hugepages;
	/* I/O command timeout in milliseconds (default 30000). */
	uint32_t io_timeout_ms;
};

/* A namespace, as nvmev_ns_info describes it. */
struct nvmev_ns_info {
	/* Size in logical blocks. */
	uint64_t blocks;
	/* Logical block size in bytes. */
	uint32_t block_size;
	/* Largest transfer of one command in bytes (larger reads and writes
	 * are split by the driver). */
	uint32_t max_transfer;
	/* 1: a zoned namespace: written at each zone's write pointer only (the
	 * controller fails other writes); zone commands are not in this API. */
	uint8_t zoned;
	uint8_t reserved[7];
};

/* Options of nvmev_qpair_create; a zero field takes the default. */
struct nvmev_qpair_opts {
	/* Entries per queue (default 128; up to depth - 1 commands in
	 * flight, capped by the controller). */
	uint16_t depth;
};

/* One completed request. */
struct nvmev_completion {
	/* The tag given at submission. */
	uint64_t tag;
	/* 0 on success, else a negative errno value (see nvmev_strerror). */
	int32_t status;
	/* The NVMe status field of a failed command (status code type in
	 * bits 10:8, status code in bits 7:0, More 13, Do Not Retry 14), or
	 * 0 when the failure was not the controller's answer. */
	uint16_t nvme_status;
	uint16_t reserved;
};

/* The library's version ("0.1.0"). */
const char *nvmev_version(void);
/* A short description of a status returned by this API. */
const char *nvmev_strerror(int status);
/* What the last failed call on this thread (or the last failed completion
 * it polled) reported, or "" if none did. Valid until the thread's next
 * call into this library. */
const char *nvmev_last_error(void);

/* Opens the controller at PCI address addr ("0000:01:00.0", bound to
 * vfio-pci) and brings it up; "sim" opens an in-process software
 * controller with one 64 MiB namespace, "sim:nvm,zoned" one with a
 * namespace per kind (zoned: 1 MiB zones), when built with the sim feature
 * (the default). opts may be NULL. */
int nvmev_ctrl_open(const char *addr, const struct nvmev_ctrl_opts *opts,
		    struct nvmev_ctrl **out);
/* Closes the controller (once its queue pairs are destroyed too: then it
 * is shut down). NULL is ignored. */
void nvmev_ctrl_close(struct nvmev_ctrl *ctrl);
/* Writes up to cap active namespace IDs to ids; returns how many the
 * controller has (which may exceed cap). */
int nvmev_ctrl_namespaces(struct nvmev_ctrl *ctrl, uint32_t *ids, size_t cap);
/* Describes namespace nsid. */
int nvmev_ns_info(struct nvmev_ctrl *ctrl, uint32_t nsid,
		  struct nvmev_ns_info *out);

/* Allocates len bytes of DMA memory (4 KiB aligned, zeroed); NULL on
 * failure. */
void *nvmev_dma_alloc(struct nvmev_ctrl *ctrl, size_t len);
/* Frees memory from nvmev_dma_alloc (no I/O on it may be in flight).
 * NULL is ignored. */
void nvmev_dma_free(struct nvmev_ctrl *ctrl, void *buf);
/* Registers len bytes at addr for DMA (mapped once, pinned), so I/O on
 * them needs no per-I/O mapping; until nvmev_unregister. */
int nvmev_register(struct nvmev_ctrl *ctrl, void *addr, size_t len);
/* Ends the registration made at addr (no I/O on it may be in flight). */
int nvmev_unregister(struct nvmev_ctrl *ctrl, void *addr);

/* Creates a queue pair; opts may be NULL. */
int nvmev_qpair_create(struct nvmev_ctrl *ctrl,
		       const struct nvmev_qpair_opts *opts,
		       struct nvmev_qpair **out);
/* Destroys a queue pair: requests in flight end first (their completions
 * are dropped). NULL is ignored. */
void nvmev_qpair_destroy(struct nvmev_qpair *qp);

/* Queues a read of len bytes (whole blocks) at lba into buf; tag comes
 * back in its completion. Published by nvmev_qpair_ring or the next
 * nvmev_qpair_poll/nvmev_qpair_wait. -EAGAIN: the queue is full for now
 * (poll, then retry); -E2BIG: the request can never fit this queue pair. */
int nvmev_read(struct nvmev_qpair *qp, uint32_t nsid, uint64_t lba, void *buf,
	       size_t len, uint64_t tag);
/* Queues a write of len bytes (whole blocks) at lba from buf. */
int nvmev_write(struct nvmev_qpair *qp, uint32_t nsid, uint64_t lba,
		const void *buf, size_t len, uint64_t tag);
/* Flushes the namespace's volatile write cache. Flush, write zeroes and
 * deallocate run to completion within the call (their outcome is also the
 * return value); their completion is delivered by the next poll. */
int nvmev_flush(struct nvmev_qpair *qp, uint32_t nsid, uint64_t tag);
/* Writes zeroes to blocks blocks at lba. */
int nvmev_write_zeroes(struct nvmev_qpair *qp, uint32_t nsid, uint64_t lba,
		       uint64_t blocks, uint64_t tag);
/* Deallocates (trims) blocks blocks at lba. */
int nvmev_deallocate(struct nvmev_qpair *qp, uint32_t nsid, uint64_t lba,
		     uint64_t blocks, uint64_t tag);
/* Publishes the queued requests to the controller (one doorbell write). */
void nvmev_qpair_ring(struct nvmev_qpair *qp);
/* Publishes queued requests, then writes up to max completed requests to
 * out; returns how many. Never blocks. */
int nvmev_qpair_poll(struct nvmev_qpair *qp, struct nvmev_completion *out,
		     size_t max);
/* Like nvmev_qpair_poll, but when nothing has completed waits up to
 * timeout_ms for a completion (asleep on the interrupt in interrupt
 * mode). */
int nvmev_qpair_wait(struct nvmev_qpair *qp, struct nvmev_completion *out,
		     size_t max, uint32_t timeout_ms);
/* Requests in flight (queued or published, not yet returned). */
int nvmev_qpair_inflight(struct nvmev_qpair *qp);
/* In interrupt mode, the queue pair's eventfd, for epoll and event loops;
 * -1 in polled mode. Owned by the queue pair. It becomes readable when the
 * controller posts completions: then call nvmev_qpair_clear_interrupt
 * first and nvmev_qpair_poll after (a completion posted in between makes
 * it readable again). Queued requests are published by the poll, or by
 * nvmev_qpair_ring before going back to sleep. A command the device never
 * completes raises no interrupt: poll at least every 100 ms or so while
 * requests are in flight, so that timeouts are checked. */
int nvmev_qpair_fd(struct nvmev_qpair *qp);
/* Reads and clears the interrupt eventfd's count. */
uint64_t nvmev_qpair_clear_interrupt(struct nvmev_qpair *qp);

#ifdef __cplusplus
}
#endif

#endif /* NVME_VFIO_H */
