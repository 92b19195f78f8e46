// The renewal clock of one CMK lease: runs `renew` every interval, never two at once, and lets
// the key guard ask for a renewal right now (an event said access may have changed).
//
// The timer knows nothing about keys; the guard decides what a renewal does and how long to
// wait before the next one (shorter while retrying a transient failure inside the grace).

export interface LeaseTimerOptions {
  intervalMs: number;
  /** One renewal. Returns the delay before the next one, or undefined for the interval. */
  renew: () => Promise<number | undefined>;
  /** A renewal threw (the guard's renew should not; this keeps the clock alive if it does). */
  onError: (err: unknown) => void;
}

export class LeaseTimer {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  /** Callers of kick() waiting for a renewal that *starts* after their call. */
  private waiters: Array<() => void> = [];
  private stopped = true;

  constructor(private readonly opts: LeaseTimerOptions) {}

  get active(): boolean {
    return !this.stopped;
  }

  start(firstDelayMs = this.opts.intervalMs): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule(firstDelayMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // Nobody will run a renewal for them any more.
    for (const w of this.waiters.splice(0)) w();
  }

  /**
   * Runs a renewal as soon as possible and resolves once a renewal that started after this call
   * has finished (a renewal already in flight may predate the change that prompted the kick).
   */
  kick(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.waiters.push(resolve));
    if (!this.running) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      this.runNow();
    }
    // else: runNow's finally sees the waiters and starts another renewal at once.
    return done;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.runNow();
    }, Math.max(0, delayMs));
    // The lease must not keep a process alive on its own (the NBD server and API do that).
    this.timer.unref();
  }

  private runNow(): void {
    if (this.stopped || this.running) return;
    const waiting = this.waiters.splice(0);
    let next: number | undefined;
    this.running = (async () => {
      try {
        next = await this.opts.renew();
      } catch (err) {
        this.opts.onError(err);
      }
    })().finally(() => {
      this.running = null;
      for (const w of waiting) w();
      if (this.stopped) return;
      if (this.waiters.length > 0) this.runNow();
      else this.schedule(next ?? this.opts.intervalMs);
    });
  }
}
