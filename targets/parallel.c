/*
 * nlpress's parallel launcher, linked into every CPU artifact's library.
 *
 * TVM's own thread pool gives each thread one fixed slice of a parallel loop and waits for
 * all of them: when the operating system deschedules one worker (another process wants the
 * core), the whole kernel waits for it, and a model of a hundred kernels runs several times
 * slower on a busy machine. This launcher cuts a loop into TASKS_PER_THREAD times more tasks
 * than threads and lets every thread, the caller included, take the next task from a shared
 * counter, so the threads that run do the work of those that do not; only a task already
 * taken by a descheduled worker is waited for.
 *
 * The runtime (targets/runtime.py) points the library's `__TVMBackendParallelLaunch` at
 * nlpress_parallel_launch and sets the thread count with nlpress_parallel_threads. The
 * generated code computes each task's range of the loop from its id and the task count
 * (ceil(extent / tasks) iterations each), so any task count is correct.
 *
 * A worker that wakes from its sleep runs where the kernel's scheduler puts it, and some
 * schedulers pack a woken thread onto the CPU of the thread that woke it, where the two then
 * take turns for milliseconds while another CPU idles. So a worker that finds itself on the
 * CPU of the last job's caller, when it joins a job or while it spins, steps aside to another
 * CPU of its affinity mask until it next sleeps (Linux only).
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getcpu, CPU_SET */
#endif
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <time.h>

/* The library is linked by TVM's C or C++ compiler: GCC's atomic builtins work in both. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)
#define ADD(x, v) __atomic_fetch_add(&(x), (v), __ATOMIC_SEQ_CST)
#ifdef __cplusplus
#define EXPORT extern "C"
#else
#define EXPORT
#endif

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

/* An idle worker spins SPIN_NS before it sleeps, looking at the clock and its CPU every
 * CHECK spins: a `pause` takes from about 10 to 140 cycles on different x86 CPUs, so a count
 * of them is no measure of time. The launcher's own waits spin SPIN times, then yield. */
enum { MAX_THREADS = 256, TASKS_PER_THREAD = 8, SPIN = 20000, CHECK = 256 };
static const int64_t SPIN_NS = 500000;

/* One parallel loop: it lives on the launching thread's stack until every thread left it. */
typedef struct {
  FTVMParallelLambda lambda;
  void* cdata;
  TVMParallelGroupEnv env;
  int next; /* the next task to take */
  int done; /* tasks finished */
  int failed;
} Job;

static struct {
  pthread_mutex_t job_lock; /* one job at a time; a second caller runs its loop alone */
  pthread_mutex_t sleep_lock;
  pthread_cond_t wake;
  int threads;                /* threads a job uses, the caller included */
  int started;                /* worker threads started */
  unsigned generation;     /* bumped for every job */
  int sleepers;        /* workers waiting on `wake` */
  Job* current;      /* the job being run, NULL between jobs */
  int active;          /* workers that may be looking at `current` */
  int caller_cpu;      /* the CPU of the last job's caller, -1 where unknown */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, 0, 0, 0, -1};

static __thread int in_job;
static int stepped_aside; /* times a worker left its caller's CPU */

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int64_t clock_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static int current_cpu(void) {
#ifdef __linux__
  return sched_getcpu();
#else
  return -1;
#endif
}

#ifdef __linux__
static __thread cpu_set_t allowed;  /* a worker's own affinity mask, as it started */
static __thread int narrowed;       /* whether the worker left a caller's CPU out of it */
#endif

/* Keep the calling worker off `cpu` (moving it now if it runs there) until it next sleeps. */
static void step_aside(int cpu) {
#ifdef __linux__
  cpu_set_t others = allowed;
  if (cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &others) || CPU_COUNT(&others) < 2) return;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof others, &others) == 0) {
    narrowed = 1;
    ADD(stepped_aside, 1);
  }
#else
  (void)cpu;
#endif
}

/* Give a worker back the whole of its affinity mask, before it sleeps. */
static void widen(void) {
#ifdef __linux__
  if (narrowed && sched_setaffinity(0, sizeof allowed, &allowed) == 0) narrowed = 0;
#endif
}

/* Take and run tasks of `job` until none is left; count them done once, at the end (one
 * atomic add per thread, not one per task: a contended add costs a cache line's trip). */
static void run_tasks(Job* job) {
  int ran = 0;
  for (;;) {
    int task = ADD(job->next, 1);
    if (task >= job->env.num_task) break;
    in_job = 1;
    if (job->lambda(task, &job->env, job->cdata) != 0) STORE(job->failed, 1);
    in_job = 0;
    ++ran;
  }
  if (ran) ADD(job->done, ran);
}

/* A worker on the CPU of the last caller steps aside: spinning or working there, it would
 * take turns with the caller for that CPU. */
static void keep_off_caller(void) {
  int cpu = LOAD(pool.caller_cpu);
  if (cpu >= 0 && cpu == current_cpu()) step_aside(cpu);
}

/* A worker joins the current job, if there is one. The launcher clears `current` and waits
 * for `active` to drop to zero before its job (on its stack) goes away, and a worker counts
 * itself active before it reads `current`, so no worker ever sees a job that is gone. */
static void join_current(void) {
  ADD(pool.active, 1);
  Job* job = LOAD(pool.current);
  if (job != 0) {
    keep_off_caller();
    run_tasks(job);
  }
  ADD(pool.active, -1);
}

static void* worker(void* unused) {
  (void)unused;
  unsigned seen = LOAD(pool.generation);
#ifdef __linux__
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) CPU_ZERO(&allowed);
#endif
  for (;;) {
    unsigned now = LOAD(pool.generation);
    int64_t until = clock_ns() + SPIN_NS;
    for (int i = 1; now == seen; ++i) {
      relax();
      if (i % CHECK == 0) {
        if (clock_ns() > until) break;
        keep_off_caller();
      }
      now = LOAD(pool.generation);
    }
    if (now == seen) {
      widen();
      pthread_mutex_lock(&pool.sleep_lock);
      ADD(pool.sleepers, 1);
      while ((now = LOAD(pool.generation)) == seen) {
        pthread_cond_wait(&pool.wake, &pool.sleep_lock);
      }
      ADD(pool.sleepers, -1);
      pthread_mutex_unlock(&pool.sleep_lock);
    }
    seen = now;
    join_current();
  }
  return 0;
}

/* Use `threads` threads (the caller included) for every later job; returns the count. */
EXPORT int nlpress_parallel_threads(int threads) {
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  pthread_mutex_lock(&pool.job_lock);
  while (pool.started < threads - 1) {
    pthread_t id;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int failed = pthread_create(&id, &attr, worker, 0);
    pthread_attr_destroy(&attr);
    if (failed) break;
#ifdef __linux__
    pthread_setname_np(id, "nlpress-worker"); /* named before it first runs */
#endif
    pool.started++;
  }
  pool.threads = pool.started + 1 < threads ? pool.started + 1 : threads;
  pthread_mutex_unlock(&pool.job_lock);
  return pool.threads;
}

/* How many times a worker stepped off its caller's CPU since the library was loaded. */
EXPORT int nlpress_parallel_stepped_aside(void) { return LOAD(stepped_aside); }

static void wait_until(int* value, int target) {
  for (int i = 0; __atomic_load_n(value, __ATOMIC_SEQ_CST) != target; ++i) {
    if (i < SPIN) {
      relax();
    } else {
      sched_yield();
    }
  }
}

/* TVMBackendParallelLaunch's contract: run lambda(task, env, cdata) for every task. */
EXPORT int nlpress_parallel_launch(FTVMParallelLambda lambda, void* cdata, int num_task) {
  if (in_job || pool.threads <= 1 || pthread_mutex_trylock(&pool.job_lock) != 0) {
    TVMParallelGroupEnv env = {0, 1}; /* nested, single-threaded or busy: run it here */
    return lambda(0, &env, cdata);
  }
  Job job = {};
  job.lambda = lambda;
  job.cdata = cdata;
  job.env.num_task = num_task > 0 ? num_task : pool.threads * TASKS_PER_THREAD;
  STORE(pool.caller_cpu, current_cpu());
  STORE(pool.current, &job);
  ADD(pool.generation, 1);
  if (LOAD(pool.sleepers) > 0) {
    pthread_mutex_lock(&pool.sleep_lock);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.sleep_lock);
  }
  run_tasks(&job);
  wait_until(&job.done, job.env.num_task);
  STORE(pool.current, (Job*)0);
  wait_until(&pool.active, 0);
  pthread_mutex_unlock(&pool.job_lock);
  return LOAD(job.failed) ? -1 : 0;
}
