/*
 * fio ioengine "nvme-vfio": fio's I/O through the nvme-vfio userspace
 * driver (its C API, linked in statically). Loaded by fio with
 * ioengine=external:/path/to/fio-nvme-vfio.so; built by
 * scripts/build-fio-engine.sh against the headers of the installed fio.
 *
 * Filenames follow SPDK's fio plugin, so job files carry over:
 *
 *	filename=trtype=PCIe traddr=0000.01.00.0 ns=1
 *
 * (fio splits filenames at ':', hence the dots in the PCI address);
 * traddr=sim runs against the driver's in-process software controller,
 * traddr=sim.nvm.zoned against one with an NVM and a zoned namespace.
 *
 * Threads: every job thread gets a queue pair per controller it uses; a
 * controller is opened once per process and shared by the jobs. thread=1
 * is required (a forked job cannot share the VFIO device).
 *
 * Memory: each job's I/O buffers (fio's own allocation) are registered
 * with the controller once, so I/O needs no per-request mapping.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fio.h"
#include "optgroup.h"

#include "nvme_vfio.h"

/* A controller opened by this process, shared by the jobs using it. */
struct nvfio_ctrl {
	struct nvfio_ctrl *next;
	char addr[64];
	struct nvmev_ctrl *ctrl;
	unsigned refs;
};

static pthread_mutex_t ctrls_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvfio_ctrl *ctrls;

/* One job's use of one controller: its queue pair and registration. */
struct nvfio_qpair {
	struct nvfio_qpair *next;
	struct nvfio_ctrl *ctrl;
	struct nvmev_qpair *qp;
	void *registered;
};

/* A file of a job: the namespace on a controller. */
struct nvfio_file {
	struct nvfio_ctrl *ctrl;
	uint32_t nsid;
	uint32_t block_size;
	uint32_t max_transfer;
	struct nvfio_qpair *qp; /* on first use */
};

/* A job's engine data. */
struct nvfio_td {
	struct nvfio_qpair *qpairs;
	struct io_u **events;
	struct nvmev_completion *comps;
	unsigned depth;
	unsigned nr_events;
	unsigned errors_logged;
};

static void log_driver_error(const char *what, const char *name, int rc)
{
	log_err("nvme-vfio: %s %s: %s (%s)\n", what, name, nvmev_strerror(rc),
		nvmev_last_error());
}

/* Opens (or finds) the controller at addr; NULL with a message if it
 * cannot be. */
static struct nvfio_ctrl *ctrl_get(const char *addr)
{
	struct nvfio_ctrl *c;

	pthread_mutex_lock(&ctrls_lock);
	for (c = ctrls; c; c = c->next)
		if (!strcmp(c->addr, addr))
			break;
	if (!c) {
		struct nvmev_ctrl *h;
		int rc = nvmev_ctrl_open(addr, NULL, &h);
		if (rc) {
			log_driver_error("cannot open controller", addr, rc);
			pthread_mutex_unlock(&ctrls_lock);
			return NULL;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			nvmev_ctrl_close(h);
			pthread_mutex_unlock(&ctrls_lock);
			return NULL;
		}
		snprintf(c->addr, sizeof(c->addr), "%s", addr);
		c->ctrl = h;
		c->next = ctrls;
		ctrls = c;
	}
	c->refs++;
	pthread_mutex_unlock(&ctrls_lock);
	return c;
}

/* One more user of a controller already open. */
static void ctrl_ref(struct nvfio_ctrl *c)
{
	pthread_mutex_lock(&ctrls_lock);
	c->refs++;
	pthread_mutex_unlock(&ctrls_lock);
}

static void ctrl_put(struct nvfio_ctrl *c)
{
	struct nvfio_ctrl **p;

	pthread_mutex_lock(&ctrls_lock);
	if (--c->refs == 0) {
		for (p = &ctrls; *p; p = &(*p)->next)
			if (*p == c) {
				*p = c->next;
				break;
			}
		nvmev_ctrl_close(c->ctrl);
		free(c);
	}
	pthread_mutex_unlock(&ctrls_lock);
}

/*
 * Parses "trtype=PCIe traddr=0000.01.00.0 ns=1" into a PCI address
 * ("0000:01:00.0") and a namespace ID. Returns 0, or -1 with a message.
 */
static int parse_filename(const char *name, char *addr, size_t len,
			  uint32_t *nsid)
{
	char *copy = strdup(name), *save = NULL, *tok;
	int have_addr = 0, rc = 0;

	if (!copy)
		return -1;
	*nsid = 1;
	for (tok = strtok_r(copy, " ", &save); tok;
	     tok = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq) {
			log_err("nvme-vfio: filename '%s': '%s' is not key=value\n",
				name, tok);
			rc = -1;
			break;
		}
		*eq = '\0';
		const char *val = eq + 1;
		if (!strcasecmp(tok, "trtype")) {
			if (strcasecmp(val, "PCIe")) {
				log_err("nvme-vfio: filename '%s': trtype %s is not supported (only PCIe)\n",
					name, val);
				rc = -1;
				break;
			}
		} else if (!strcasecmp(tok, "traddr")) {
			snprintf(addr, len, "%s", val);
			if (!strncmp(addr, "sim.", 4)) {
				/* sim.nvm.zoned -> sim:nvm,zoned */
				addr[3] = ':';
				for (char *c = addr + 4; *c; c++)
					if (*c == '.')
						*c = ',';
			} else {
				/* 0000.01.00.0 -> 0000:01:00.0: the first
				 * two dots. */
				for (int i = 0, dots = 0; addr[i] && dots < 2; i++)
					if (addr[i] == '.' && strchr(addr + i + 1, '.')) {
						addr[i] = ':';
						dots++;
					}
			}
			have_addr = 1;
		} else if (!strcasecmp(tok, "ns")) {
			char *end;
			unsigned long v = strtoul(val, &end, 0);
			if (*end || v == 0 || v > 0xfffffffeul) {
				log_err("nvme-vfio: filename '%s': bad namespace ID '%s'\n",
					name, val);
				rc = -1;
				break;
			}
			*nsid = (uint32_t)v;
		} else {
			log_err("nvme-vfio: filename '%s': unknown key '%s' (trtype, traddr, ns)\n",
				name, tok);
			rc = -1;
			break;
		}
	}
	if (!rc && !have_addr) {
		log_err("nvme-vfio: filename '%s' has no traddr= (e.g. \"trtype=PCIe traddr=0000.01.00.0 ns=1\")\n",
			name);
		rc = -1;
	}
	free(copy);
	return rc;
}

/* Opens each file's controller and sizes the file from its namespace. */
static int nvfio_setup(struct thread_data *td)
{
	struct fio_file *f;
	unsigned i;

	if (!td->o.use_thread) {
		log_err("nvme-vfio: the engine needs thread=1 (jobs as threads of one process: a forked job cannot share the device)\n");
		return 1;
	}
	for_each_file(td, f, i) {
		struct nvfio_file *nf;
		struct nvmev_ns_info info;
		char addr[64];
		uint32_t nsid;
		int rc;

		if (FILE_ENG_DATA(f))
			continue;
		if (parse_filename(f->file_name, addr, sizeof(addr), &nsid))
			return 1;
		nf = calloc(1, sizeof(*nf));
		if (!nf)
			return 1;
		nf->ctrl = ctrl_get(addr);
		if (!nf->ctrl) {
			free(nf);
			return 1;
		}
		rc = nvmev_ns_info(nf->ctrl->ctrl, nsid, &info);
		if (rc) {
			log_driver_error("namespace of", f->file_name, rc);
			ctrl_put(nf->ctrl);
			free(nf);
			return 1;
		}
		nf->nsid = nsid;
		nf->block_size = info.block_size;
		nf->max_transfer = info.max_transfer;
		f->real_file_size = info.blocks * info.block_size;
		f->filetype = FIO_TYPE_BLOCK;
		fio_file_set_size_known(f);
		FILE_SET_ENG_DATA(f, nf);
	}
	return 0;
}

static int nvfio_init(struct thread_data *td)
{
	struct nvfio_td *t = calloc(1, sizeof(*t));

	if (!t)
		return 1;
	t->depth = td->o.iodepth;
	t->events = calloc(t->depth, sizeof(*t->events));
	t->comps = calloc(t->depth, sizeof(*t->comps));
	if (!t->events || !t->comps) {
		free(t->events);
		free(t->comps);
		free(t);
		return 1;
	}
	td->io_ops_data = t;
	return 0;
}

/* The job's queue pair on the file's controller, created on first use
 * (with the job's buffers registered). */
static struct nvfio_qpair *qpair_of(struct thread_data *td,
				    struct nvfio_file *nf)
{
	struct nvfio_td *t = td->io_ops_data;
	struct nvfio_qpair *q;
	struct nvmev_qpair_opts opts = { 0 };
	int rc;

	if (nf->qp)
		return nf->qp;
	for (q = t->qpairs; q; q = q->next)
		if (q->ctrl == nf->ctrl)
			return nf->qp = q;
	q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	/* Room for the job's depth of its largest requests (each split into
	 * commands of at most max_transfer bytes), and the entry a queue
	 * keeps empty. */
	unsigned long long bs = td->o.max_bs[DDIR_READ];
	if (td->o.max_bs[DDIR_WRITE] > bs)
		bs = td->o.max_bs[DDIR_WRITE];
	unsigned long long per = nf->max_transfer ? (bs + nf->max_transfer - 1) / nf->max_transfer : 1;
	unsigned long long entries = (unsigned long long)t->depth * (per ? per : 1) + 1;
	opts.depth = entries > 0xffff ? 0xffff : (uint16_t)entries;
	rc = nvmev_qpair_create(nf->ctrl->ctrl, &opts, &q->qp);
	if (rc) {
		log_driver_error("cannot create a queue pair on", nf->ctrl->addr, rc);
		free(q);
		return NULL;
	}
	if (td->orig_buffer && td->orig_buffer_size) {
		rc = nvmev_register(nf->ctrl->ctrl, td->orig_buffer,
				    td->orig_buffer_size);
		if (rc)
			log_driver_error("cannot register the I/O buffers with (each I/O is mapped instead)",
					 nf->ctrl->addr, rc);
		else
			q->registered = td->orig_buffer;
	}
	q->ctrl = nf->ctrl;
	ctrl_ref(nf->ctrl);
	q->next = t->qpairs;
	t->qpairs = q;
	return nf->qp = q;
}

static enum fio_q_status nvfio_queue(struct thread_data *td, struct io_u *io_u)
{
	struct nvfio_file *nf = FILE_ENG_DATA(io_u->file);
	struct nvfio_qpair *q;
	uint64_t tag = (uint64_t)(uintptr_t)io_u;
	uint64_t lba;
	int rc;

	fio_ro_check(td, io_u);
	q = qpair_of(td, nf);
	if (!q) {
		io_u->error = EIO;
		return FIO_Q_COMPLETED;
	}
	if (io_u->offset % nf->block_size || io_u->xfer_buflen % nf->block_size) {
		log_err("nvme-vfio: %s: offset %llu or length %llu is not a multiple of the block size %u\n",
			io_u->file->file_name, io_u->offset, io_u->xfer_buflen,
			nf->block_size);
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	lba = io_u->offset / nf->block_size;
	switch (io_u->ddir) {
	case DDIR_READ:
		rc = nvmev_read(q->qp, nf->nsid, lba, io_u->xfer_buf,
				io_u->xfer_buflen, tag);
		break;
	case DDIR_WRITE:
		rc = nvmev_write(q->qp, nf->nsid, lba, io_u->xfer_buf,
				 io_u->xfer_buflen, tag);
		break;
	case DDIR_TRIM:
		/* Runs to completion; its completion comes from the poll. */
		nvmev_deallocate(q->qp, nf->nsid, lba,
				 io_u->xfer_buflen / nf->block_size, tag);
		return FIO_Q_QUEUED;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
	case DDIR_SYNC_FILE_RANGE:
		nvmev_flush(q->qp, nf->nsid, tag);
		return FIO_Q_QUEUED;
	default:
		io_u->error = EINVAL;
		return FIO_Q_COMPLETED;
	}
	if (rc == -EAGAIN)
		return FIO_Q_BUSY;
	if (rc) {
		log_driver_error(io_u->ddir == DDIR_READ ? "read on" : "write on",
				 io_u->file->file_name, rc);
		io_u->error = -rc;
		return FIO_Q_COMPLETED;
	}
	return FIO_Q_QUEUED;
}

static int nvfio_commit(struct thread_data *td)
{
	struct nvfio_td *t = td->io_ops_data;

	for (struct nvfio_qpair *q = t->qpairs; q; q = q->next)
		nvmev_qpair_ring(q->qp);
	return 0;
}

/* Turns completions into fio's events. */
static void take(struct thread_data *td, struct nvfio_td *t, int n)
{
	for (int i = 0; i < n; i++) {
		struct nvmev_completion *c = &t->comps[i];
		struct io_u *io_u = (struct io_u *)(uintptr_t)c->tag;

		io_u->error = c->status ? -c->status : 0;
		if (c->status && t->errors_logged++ < 16)
			log_err("nvme-vfio: %s at offset %llu: %s (%s)\n",
				io_u->ddir == DDIR_READ ? "read" :
				io_u->ddir == DDIR_WRITE ? "write" : "command",
				io_u->offset, nvmev_strerror(c->status),
				nvmev_last_error());
		t->events[t->nr_events++] = io_u;
	}
}

static int nvfio_getevents(struct thread_data *td, unsigned int min,
			   unsigned int max, const struct timespec *timeout)
{
	struct nvfio_td *t = td->io_ops_data;
	struct timespec start;
	uint64_t limit_ns = timeout ? timeout->tv_sec * 1000000000ull + timeout->tv_nsec : 0;

	if (max > t->depth)
		max = t->depth;
	t->nr_events = 0;
	if (timeout)
		fio_gettime(&start, NULL);
	for (;;) {
		for (struct nvfio_qpair *q = t->qpairs; q && t->nr_events < max; q = q->next) {
			int n = nvmev_qpair_poll(q->qp, t->comps, max - t->nr_events);
			if (n < 0) {
				log_driver_error("poll on", q->ctrl->addr, n);
				return n;
			}
			take(td, t, n);
		}
		if (t->nr_events >= min)
			break;
		if (timeout && ntime_since_now(&start) >= limit_ns)
			break;
	}
	return t->nr_events;
}

static struct io_u *nvfio_event(struct thread_data *td, int event)
{
	struct nvfio_td *t = td->io_ops_data;

	return t->events[event];
}

static void nvfio_cleanup(struct thread_data *td)
{
	struct nvfio_td *t = td->io_ops_data;
	struct fio_file *f;
	unsigned i;

	if (t) {
		while (t->qpairs) {
			struct nvfio_qpair *q = t->qpairs;
			t->qpairs = q->next;
			/* Ends what is in flight first. */
			nvmev_qpair_destroy(q->qp);
			if (q->registered)
				nvmev_unregister(q->ctrl->ctrl, q->registered);
			ctrl_put(q->ctrl);
			free(q);
		}
		free(t->events);
		free(t->comps);
		free(t);
		td->io_ops_data = NULL;
	}
	for_each_file(td, f, i) {
		struct nvfio_file *nf = FILE_ENG_DATA(f);
		if (nf) {
			ctrl_put(nf->ctrl);
			free(nf);
			FILE_SET_ENG_DATA(f, NULL);
		}
	}
}

static int nvfio_open_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int nvfio_close_file(struct thread_data *td, struct fio_file *f)
{
	return 0;
}

static int nvfio_invalidate(struct thread_data *td, struct fio_file *f)
{
	/* No page cache between fio and the device. */
	return 0;
}

struct ioengine_ops ioengine = {
	.name = "nvme-vfio",
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_RAWIO | FIO_NOEXTEND | FIO_NODISKUTIL | FIO_MEMALIGN,
	.setup = nvfio_setup,
	.init = nvfio_init,
	.queue = nvfio_queue,
	.commit = nvfio_commit,
	.getevents = nvfio_getevents,
	.event = nvfio_event,
	.cleanup = nvfio_cleanup,
	.open_file = nvfio_open_file,
	.close_file = nvfio_close_file,
	.invalidate = nvfio_invalidate,
};
