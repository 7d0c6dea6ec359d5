import { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import { Construct } from 'constructs';
import { counterTableDefinition, TTL_ATTRIBUTE, USER_LIMITS_PREFIX } from '../lambda/aws/table-design';
import { acknowledgeGrantWildcards, arnWildcardFinding } from './nag-acknowledgments';

type KeyElement = { readonly AttributeName: string; readonly KeyType: 'HASH' | 'RANGE' };

/** Turns one key schema of the shared table design into CDK partition and sort key attributes. */
function keysOf(schema: readonly KeyElement[]): { partitionKey: dynamodb.Attribute; sortKey?: dynamodb.Attribute } {
  const attribute = (keyType: KeyElement['KeyType']): dynamodb.Attribute | undefined => {
    const name = schema.find((k) => k.KeyType === keyType)?.AttributeName;
    if (name === undefined) return undefined;
    const type = counterTableDefinition.AttributeDefinitions.find((a) => a.AttributeName === name)?.AttributeType;
    if (type === undefined) throw new Error(`table design: attribute ${name} has no definition`);
    return { name, type: type === 'N' ? dynamodb.AttributeType.NUMBER : dynamodb.AttributeType.STRING };
  };
  const partitionKey = attribute('HASH');
  if (partitionKey === undefined) throw new Error('table design: key schema has no HASH key');
  return { partitionKey, sortKey: attribute('RANGE') };
}

export interface UsageCountersProps {
  /**
   * What happens to the table when it leaves the stack. Counters can be rebuilt from the event log, but the table
   * also holds the hashed gateway keys, so it is kept.
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
  /**
   * Refuse `DeleteTable` until turned off.
   * @default true
   */
  readonly deletionProtection?: boolean;
}

/**
 * The live counters table: per-user, per-period usage totals updated on every request, and the hashed gateway
 * keys. Key schema and ranking indexes come from `lambda/aws/table-design.ts`, the same definition the counter
 * store's tests create in dynalite. On-demand capacity (traffic is bursty and a fixed capacity would throttle
 * the proxy), point-in-time recovery, TTL on `expires_at`.
 *
 * @example
 * const counters = new UsageCounters(this, 'Counters');
 * counters.grantReadWrite(proxyFunction);
 */
export class UsageCounters extends Construct {
  readonly table: dynamodb.Table;

  constructor(scope: Construct, id: string, props: UsageCountersProps = {}) {
    super(scope, id);
    this.table = new dynamodb.Table(this, 'Table', {
      ...keysOf(counterTableDefinition.KeySchema),
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveAttribute: TTL_ATTRIBUTE,
      deletionProtection: props.deletionProtection ?? true,
      removalPolicy: props.removalPolicy ?? RemovalPolicy.RETAIN,
    });
    for (const index of counterTableDefinition.GlobalSecondaryIndexes) {
      this.table.addGlobalSecondaryIndex({
        indexName: index.IndexName,
        ...keysOf(index.KeySchema),
        projectionType: dynamodb.ProjectionType[index.Projection.ProjectionType],
      });
    }
  }

  /** Lets `grantee` read counters and keys (GetItem, Query, Scan, BatchGetItem, on the table and its indexes). */
  grantRead(grantee: iam.IGrantable): iam.Grant {
    const grant = this.table.grantReadData(grantee);
    this.acknowledgeIndexWildcard(grantee);
    return grant;
  }

  /** Lets `grantee` read and update counters and keys. */
  grantReadWrite(grantee: iam.IGrantable): iam.Grant {
    const grant = this.table.grantReadWriteData(grantee);
    this.acknowledgeIndexWildcard(grantee);
    return grant;
  }

  /**
   * Lets `grantee` put and delete users' own limits, and nothing else: the items under `L#<user>` partition keys
   * (IAM `dynamodb:LeadingKeys`), so totals, keys and limit counters stay out of its reach.
   */
  grantWriteUserLimits(grantee: iam.IGrantable): iam.Grant {
    return iam.Grant.addToPrincipal({
      grantee,
      actions: ['dynamodb:PutItem', 'dynamodb:DeleteItem'],
      resourceArns: [this.table.tableArn],
      conditions: { 'ForAllValues:StringLike': { 'dynamodb:LeadingKeys': [`${USER_LIMITS_PREFIX}*`] } },
    });
  }

  private acknowledgeIndexWildcard(grantee: iam.IGrantable): void {
    acknowledgeGrantWildcards(
      grantee,
      [arnWildcardFinding(this.table, '/index/*')],
      'Rankings query the counters table’s own global secondary indexes; DynamoDB grants name them as <table ARN>/index/*.',
    );
  }
}
