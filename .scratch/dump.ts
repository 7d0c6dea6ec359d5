import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { LlmUsageGatewayStack } from '../lib/llm-usage-gateway-stack';
const app = new App({ context: { ...require('../cdk.json').context, 'aws:cdk:bundling-stacks': [] }, builtinCloudFormationValidation: false });
const stack = new LlmUsageGatewayStack(app, 'LlmUsageGateway');
const t = Template.fromStack(stack).toJSON();
require('fs').writeFileSync('.scratch/template.json', JSON.stringify(t, null, 2));
for (const [id, r] of Object.entries<any>(t.Resources)) console.log(r.Type.padEnd(40), id);
