/**
 * Entry of the metrics Lambda (buffered API Gateway REST proxy integration). Translation only.
 */
import { metricsLambdaConfigFromEnv } from './aws-config';
import { bufferedHandler } from './buffered-adapter';
import { createMetricsApp } from './metrics-app';

export const handler = bufferedHandler(createMetricsApp(metricsLambdaConfigFromEnv(process.env)));
