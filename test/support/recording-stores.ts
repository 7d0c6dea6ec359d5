/**
 * Minimal port implementations for core tests: they record what the core hands them and can be told to fail.
 * Real storage semantics are tested against the real adapters (DuckDB, dynalite); these only observe the core.
 */
import type { CounterStore, EventSink, ListUsersQuery, UserDetail, UserPage } from '../../lambda/core/ports';
import type { UsageEvent } from '../../lambda/core/usage-event';

export class RecordingSink implements EventSink {
  readonly events: UsageEvent[] = [];
  failures = 0;
  async write(events: readonly UsageEvent[]): Promise<void> {
    if (this.failures > 0) {
      this.failures -= 1;
      throw new Error('sink unavailable');
    }
    this.events.push(...events);
  }
}

export class RecordingCounters implements CounterStore {
  readonly events: UsageEvent[] = [];
  failures = 0;
  async record(events: readonly UsageEvent[]): Promise<void> {
    if (this.failures > 0) {
      this.failures -= 1;
      throw new Error('counters unavailable');
    }
    this.events.push(...events);
  }
  async listUsers(_query: ListUsersQuery): Promise<UserPage> {
    return { users: [], nextCursor: null };
  }
  async getUser(): Promise<UserDetail | null> {
    return null;
  }
}
