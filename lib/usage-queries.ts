import { Duration, Names, RemovalPolicy, Size, Stack } from 'aws-cdk-lib';
import * as athena from 'aws-cdk-lib/aws-athena';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { acknowledgeGrantWildcards, arnWildcardFinding, S3_READ_WRITE_ACTION_FINDINGS } from './nag-acknowledgments';

/** Athena engine the history queries are written for (Trino SQL). */
export const ATHENA_ENGINE_VERSION = 'Athena engine version 3';

/** Key prefix of query results in the results bucket. */
export const QUERY_RESULTS_PREFIX = 'results/';

export interface UsageQueriesProps {
  /**
   * Bucket that receives the results bucket's S3 server access logs.
   */
  readonly accessLogsBucket: s3.IBucket;
  /**
   * Largest amount of data one query may scan before Athena cancels it; a guard against a runaway history query
   * (Athena bills $5 per TB scanned).
   * @default Size.gibibytes(10)
   */
  readonly bytesScannedCutoffPerQuery?: Size;
  /**
   * How long query result files are kept. Results are read once, right after the query; Athena's own result
   * reuse (set per query with `ResultReuseConfiguration` on `StartQueryExecution`) only needs them for as long as
   * its reuse window.
   * @default Duration.days(7)
   */
  readonly resultsExpireAfter?: Duration;
  /**
   * Name of the Athena workgroup.
   * @default - a name unique to this construct's path
   */
  readonly workGroupName?: string;
}

/**
 * Where history queries run: an Athena engine v3 workgroup that enforces its own settings (result location,
 * encryption, scan cutoff) and publishes CloudWatch metrics, and the bucket its results land in.
 *
 * @example
 * const queries = new UsageQueries(this, 'Queries', { accessLogsBucket });
 * queries.grantRunQueries(metricsFunction);
 */
export class UsageQueries extends Construct {
  readonly resultsBucket: s3.Bucket;
  readonly workGroup: athena.CfnWorkGroup;
  readonly workGroupName: string;

  constructor(scope: Construct, id: string, props: UsageQueriesProps) {
    super(scope, id);
    this.resultsBucket = new s3.Bucket(this, 'Results', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      serverAccessLogsBucket: props.accessLogsBucket,
      serverAccessLogsPrefix: 'query-results/',
      lifecycleRules: [
        { id: 'expire-results', expiration: props.resultsExpireAfter ?? Duration.days(7) },
        { id: 'abort-incomplete-uploads', abortIncompleteMultipartUploadAfter: Duration.days(1) },
      ],
      removalPolicy: RemovalPolicy.RETAIN,
    });

    this.workGroupName = props.workGroupName ?? Names.uniqueResourceName(this, { maxLength: 128 });
    this.workGroup = new athena.CfnWorkGroup(this, 'WorkGroup', {
      name: this.workGroupName,
      description: 'LLM usage gateway history queries',
      state: 'ENABLED',
      // Lets `cdk destroy` remove the workgroup even after it has run queries; the results bucket is kept.
      recursiveDeleteOption: true,
      workGroupConfiguration: {
        engineVersion: { selectedEngineVersion: ATHENA_ENGINE_VERSION },
        enforceWorkGroupConfiguration: true,
        publishCloudWatchMetricsEnabled: true,
        bytesScannedCutoffPerQuery: (props.bytesScannedCutoffPerQuery ?? Size.gibibytes(10)).toBytes(),
        resultConfiguration: {
          outputLocation: `s3://${this.resultsBucket.bucketName}/${QUERY_RESULTS_PREFIX}`,
          encryptionConfiguration: { encryptionOption: 'SSE_S3' },
        },
      },
    });
  }

  /** ARN of the workgroup. */
  get workGroupArn(): string {
    return Stack.of(this).formatArn({ service: 'athena', resource: 'workgroup', resourceName: this.workGroupName });
  }

  /**
   * Lets `grantee` start, watch, read and stop queries in this workgroup, and read and write their result files.
   * Reading the queried tables is granted separately (e.g. `UsageLog.grantReadEvents`).
   */
  grantRunQueries(grantee: iam.IGrantable): iam.Grant {
    const grant = iam.Grant.addToPrincipal({
      grantee,
      actions: [
        'athena:StartQueryExecution',
        'athena:GetQueryExecution',
        'athena:GetQueryResults',
        'athena:StopQueryExecution',
        'athena:GetWorkGroup',
      ],
      resourceArns: [this.workGroupArn],
    });
    this.resultsBucket.grantReadWrite(grantee, `${QUERY_RESULTS_PREFIX}*`);
    acknowledgeGrantWildcards(
      grantee,
      [...S3_READ_WRITE_ACTION_FINDINGS, arnWildcardFinding(this.resultsBucket, `/${QUERY_RESULTS_PREFIX}*`)],
      'Athena writes and reads query result files, named by query id, under results/ of the results bucket with the caller’s permissions.',
    );
    return grant;
  }
}
